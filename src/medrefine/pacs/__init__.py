"""The hospital-network bridge: medrefine as a PACS client and as a DICOM receiver.

  config.py       frozen settings: a DICOMweb server, a query, a DIMSE destination
  credentials.py  the HTTP session: credentials from the environment or netrc, TLS checks
  dicomweb.py     QIDO-RS / WADO-RS / STOW-RS through dicomweb-client, failures as one line
  options.py      the command-line options of ``segment --dicomweb`` and ``listen``
  pull.py         ``segment --dicomweb``: pull series, segment them, push the DICOM-SEG back
  receiver.py     the storage SCP (pynetdicom): received instances grouped into series
  listen.py       ``listen``: segment each series once it is complete, send the SEG onward

Segmentation itself is the file batch runner's (``commands/segment.py``): each series becomes a
folder of DICOM files that ``segment_one`` reads, segments and writes like any other input.
"""
