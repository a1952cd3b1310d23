"""Versioned TPT prompt templates (tpt_<name>_v<N>.txt); a changed template gets a new file, never an edit."""
