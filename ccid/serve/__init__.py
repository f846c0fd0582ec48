"""``ccid serve``: pcsc-lite's client/server protocol over a UNIX socket, on this driver.

Unmodified libpcsclite clients (pcsc_scan, OpenSC, pyscard, ...) point
``PCSCLITE_CSOCK_NAME`` at the socket and use every reader ``ccid`` can open.
``wire`` holds the message layouts, ``protocol`` the sans-IO request parser and version
negotiation, ``server`` the sockets, clients and readers, ``features`` SCardControl.
"""
