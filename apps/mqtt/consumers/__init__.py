"""One module per message kind, domain logic only; apps/core/tasks/base.py does the rest."""
