"""The whole mail stack: the seed tutorial's database and wiring (``seed``), vmaild's shipped
files (``shipped``), and :class:`~harness.stack.mailstack.MailStack` running MariaDB, vmaild,
Courier and Postfix from them (``mailstack``; ``config``, ``clients``, ``procs``)."""
