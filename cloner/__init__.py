"""The source side of a host-assisted clone: ``python -m cloner`` in the cloner pod.

Reads the source volume (:mod:`cloner.source`: ``disk.img`` by its data ranges, a device by
zero detection, or a tar of the files for archive content), frames it (:mod:`cloner.frames`,
the stream format is :mod:`importer.clonewire`) and sends it to the target's upload server in
clone mode over mutual TLS, resuming from the server's acknowledged offset after a cut
(:mod:`cloner.client`, :mod:`cloner.run`). It imports :mod:`importer`, never :mod:`uploadproxy`.
"""
