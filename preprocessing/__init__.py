"""PySpark jobs: pure DataFrame -> DataFrame functions, with thin job shells. Only the shells build sessions."""
