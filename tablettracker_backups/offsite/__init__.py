"""Offsite copies in an S3-compatible store: the client (:mod:`.client`), the local record of
what is offsite (:mod:`.record`), what should be offsite and how far behind it is
(:mod:`.policy`), format 2's page store under the prefix (:mod:`.pages`), and the sync that
uploads, checks and prunes (:mod:`.sync`)."""
