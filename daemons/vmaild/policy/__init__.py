"""The Postfix access-policy service (docs/PROTOCOLS.md section 3).

``service.PolicyService`` runs the checks a stock Postfix cannot do from its lookup tables:
recipient mailbox state and quota, sender ownership for authenticated users, and sending
limits shared through the database. One module per check; ``actions`` and ``queries`` hold
what they share: the reply strings Postfix will accept and the configurable SQL.
"""
