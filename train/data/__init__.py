"""The training data: fused shards read as scans, augmented, voxelised and batched (the same
augmented scan seen as the fused and the single view), in an order set by (seed, step)."""
