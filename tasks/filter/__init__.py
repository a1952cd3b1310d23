"""Keep/drop decisions from signals: SQL quality rules, PII, decontamination against eval sets."""
