"""Test oracles: plain Arrow/Python restatements of steps that production runs in DuckDB SQL, used only by tests."""
