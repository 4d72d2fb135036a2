"""One module per topic kind, domain logic only; base.py and apps/core/tasks/base.py do the rest."""
