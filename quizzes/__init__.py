"""Question banks, drawing, grading and attempts (see the quiz issue)."""
