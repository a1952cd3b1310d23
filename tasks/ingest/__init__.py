"""Files -> documents: the format readers, source planning, quarantine, and the watched-prefix state."""
