"""Where bytes live: the stores (local directory, S3), bucket settings, object lock, bucket setup."""
