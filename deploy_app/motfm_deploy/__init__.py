"""What the operators share: image planes, the bundle, the output header, the label map, the jobs."""
