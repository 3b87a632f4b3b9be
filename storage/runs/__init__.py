"""What runs write and resume from: result tables, their parts, the inbox's records."""
