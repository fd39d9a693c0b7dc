"""Operator accountability: the audit trail and the two-person approvals it records."""
