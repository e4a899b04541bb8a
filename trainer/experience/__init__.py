"""Repository-Centric Experience: a git repository turned into training episodes (four units)."""
