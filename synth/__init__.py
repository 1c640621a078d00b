"""The synthetic stand-in for SemanticKITTI: a procedural street, a ray-cast LiDAR, sequences in the KITTI layout."""
