"""The DICOM listener: a C-STORE/C-ECHO/MPPS SCP that stores what scanners send, durably and
byte-for-byte, assembles studies and announces each completed one as a ``StudyReceived`` event."""
