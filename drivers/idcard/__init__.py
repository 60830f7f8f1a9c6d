"""Second-generation ID-card readers (GA 467 SAM protocol, frames ``AA AA AA 96 69``).

``protocol`` frames and parses the SAM protocol (no I/O); ``text`` decodes the 256-byte
text block; ``serial`` and ``usbhid`` are the transports the registry binds as the
``idcard_serial`` and ``idcard_usb`` drivers.
"""
