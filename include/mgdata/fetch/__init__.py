"""Getting remote files into the store: streamed, resumable, verified downloads (`mgdata.fetch.http`)."""
