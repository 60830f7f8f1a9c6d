"""Hardware-in-the-loop harness: a QEMU guest with real kernel input, USB and serial drivers."""
