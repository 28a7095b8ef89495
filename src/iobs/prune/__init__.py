"""Everything that knows about torch.nn.Module: layer discovery, Hessians, model walks, I-OBS loop."""
