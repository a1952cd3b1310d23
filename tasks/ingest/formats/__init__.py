"""One reader per input format; each turns an opened binary stream into document and quarantine rows."""
