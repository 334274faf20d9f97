"""Input data: safe image loading (``images``) for the folders of images to protect."""
