"""RFE U-Net skin-lesion segmentation bundle: network, losses, metrics, transforms, data and inference."""
