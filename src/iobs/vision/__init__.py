"""Vision reference networks (MLPNet, a small ViT, a MobileNetV1-style CNN) and global, Fisher-based pruning:
global magnitude, WoodFisher, the Combinatorial Brain Surgeon (CBS) and I-OBS with the same Fisher blocks."""
