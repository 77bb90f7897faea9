"""saslauthd with pam_mysql: the seed tutorial SMTP AUTH path, for comparisons."""
