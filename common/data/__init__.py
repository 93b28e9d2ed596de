"""COCO data on the host: the dataset layout and annotations, image decode, preprocessing, the batch loader."""
