"""Image bytes: decoding and validation of inputs, and the files that hold inputs and results."""
