"""Named offline data assets (text, MNIST, ...) and calibration batches."""
