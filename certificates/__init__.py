"""Certificates of training, rendered with WeasyPrint (see the reports and certificates issue)."""
