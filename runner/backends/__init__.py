"""Where `runner submit` sends a job. Each backend lives in its own module."""
