"""Raw network outputs -> detections in original image pixels, by the convention a spec declares."""
