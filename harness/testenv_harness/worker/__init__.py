"""What one test worker holds: `TestEnv` (its namespace, URLs and exported variables), the
connection to its services (forwarded or direct), isolation helpers, faults, and the handoff
file the set-up process leaves for it.

May import: ground, services, tunnel
"""
