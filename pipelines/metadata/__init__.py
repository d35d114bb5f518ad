"""A1111 infotext (write and read) and saving outputs."""
