"""The losses: segmentation (cross-entropy + Lovasz) and the three M2SKD distillation terms."""
