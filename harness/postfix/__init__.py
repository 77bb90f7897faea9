"""A private Postfix instance: ``server`` runs it, ``config`` writes its main.cf and
master.cf, ``altdirs`` registers its configuration directory with the system's Postfix."""
