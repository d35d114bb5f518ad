"""Pixels in and out: decoding uploads, resizing, masks, inpaint and outpaint geometry."""
