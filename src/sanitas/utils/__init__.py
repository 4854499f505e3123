"""Small shared helpers: atomic files, hashing, seeding, devices, progress bars, paths."""
