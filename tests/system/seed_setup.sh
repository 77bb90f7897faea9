#!/usr/bin/env bash
# The seed tutorial (shared/seed/, sections 1-8) on a booted Debian 12, as its author meant it.
# Run inside a test host as root. Where the tutorial and Debian 12 differ, the smallest change
# that keeps the author's intent, each named on its line:
# * mysql-server/mysql-client -> default-mysql-server/-client (MariaDB); courier-imap-ssl and
#   courier-pop-ssl are part of courier-imap and courier-pop since Debian 10; mailx -> bsd-mailx;
# * the database is `mail_system` everywhere (the tutorial says `mail` in pam.d/smtp,
#   sasl/smtpd.conf and authmysqlrc, and `mail_system` in the GRANT and the Postfix files);
# * authmysqlrc holds the tutorial's lines only ("edit it as follows"): the packaged file's
#   other defaults (MYSQL_NAME_FIELD name, ...) name columns the seed's users table lacks;
# * openssl and mkimapdcert run without prompts; the "hello mail" for new users is sent by the
#   test, like the tutorial's mailx step.
set -euo pipefail
HOSTNAME_FQDN=${SEED_HOSTNAME:-mail.raecoo.com}
export DEBIAN_FRONTEND=noninteractive

# 1. packages ("Internet Site", the system mail name)
debconf-set-selections <<DEB
postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string $HOSTNAME_FQDN
DEB
apt-get update -q
apt-get install -y -q postfix postfix-mysql postfix-doc default-mysql-client default-mysql-server \
  courier-authdaemon courier-authlib-mysql courier-pop courier-imap \
  libsasl2-2 libsasl2-modules libsasl2-modules-sql sasl2-bin libpam-mysql openssl bsd-mailx

# 2. database, user, tables; MariaDB on 127.0.0.1 (Debian's default bind-address already)
mysql -uroot <<'SQL'
create database mail_system;
use mail_system;
GRANT ALL ON mail_system.* TO 'mail_admin'@'localhost' IDENTIFIED BY 'mail_admin_password';
FLUSH PRIVILEGES;
CREATE TABLE domains (domain varchar(50) NOT NULL, PRIMARY KEY (domain) );
CREATE TABLE users (email varchar(80) NOT NULL, password varchar(20) NOT NULL,
  PRIMARY KEY (email) );
CREATE TABLE forwardings (source varchar(80) NOT NULL, destination TEXT NOT NULL,
  PRIMARY KEY (source) );
CREATE TABLE transport (domain varchar(128) NOT NULL default '', transport varchar(128) NOT NULL default '', UNIQUE KEY domain (domain));
SQL
systemctl restart mariadb

# 3. Postfix with MySQL
cf() {
  cat >"/etc/postfix/mysql-virtual_$1.cf" <<CF
user = mail_admin
password = mail_admin_password
dbname = mail_system
query = $2
hosts = 127.0.0.1
CF
}
cf domains "SELECT domain AS virtual FROM domains WHERE domain='%s'"
cf mailboxes "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')
        FROM users WHERE email='%s'"
cf forwardings "SELECT destination FROM forwardings WHERE source='%s'"
cf email2email "SELECT email FROM users WHERE email='%s'"
chmod o= /etc/postfix/mysql-virtual_*.cf
chgrp postfix /etc/postfix/mysql-virtual_*.cf
getent group vmail >/dev/null || groupadd -g 5000 vmail
id vmail >/dev/null 2>&1 || useradd -g vmail -u 5000 vmail -d /home/vmail -m
postconf -e "myhostname = $HOSTNAME_FQDN" \
  "mydestination = $HOSTNAME_FQDN, localhost, localhost.localdomain" \
  "message_size_limit = 30720000" \
  "virtual_alias_domains =" \
  "virtual_alias_maps = proxy:mysql:/etc/postfix/mysql-virtual_forwardings.cf, mysql:/etc/postfix/mysql-virtual_email2email.cf" \
  "virtual_mailbox_domains = proxy:mysql:/etc/postfix/mysql-virtual_domains.cf" \
  "virtual_mailbox_maps = proxy:mysql:/etc/postfix/mysql-virtual_mailboxes.cf" \
  "virtual_mailbox_base = /home/vmail" \
  "virtual_uid_maps = static:5000" \
  "virtual_gid_maps = static:5000" \
  "smtpd_sasl_auth_enable = yes" \
  "broken_sasl_auth_clients = yes" \
  "smtpd_sasl_authenticated_header = yes" \
  "smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated,reject_unauth_destination" \
  "smtpd_use_tls = yes" \
  "smtpd_tls_cert_file = /etc/postfix/smtpd.cert" \
  "smtpd_tls_key_file = /etc/postfix/smtpd.key" \
  "virtual_create_maildirsize = yes" \
  "virtual_maildir_extended = yes" \
  'proxy_read_maps = $local_recipient_maps $mydestination $virtual_alias_maps $virtual_alias_domains $virtual_mailbox_maps $virtual_mailbox_domains $relay_recipient_maps $relay_domains $canonical_maps $sender_canonical_maps $recipient_canonical_maps $relocated_maps $transport_maps $mynetworks $virtual_mailbox_limit_maps'
(cd /etc/postfix && openssl req -new -outform PEM -out smtpd.cert -newkey rsa:2048 -nodes \
   -keyout smtpd.key -keyform PEM -days 365 -x509 -subj "/CN=$HOSTNAME_FQDN" 2>/dev/null)
chmod o= /etc/postfix/smtpd.key

# 4. saslauthd with pam_mysql (smtpd is chrooted in Debian's master.cf: the socket lives in
#    the chroot), postfix in group sasl ("add the postfix user to the sasl group")
mkdir -p /var/spool/postfix/var/run/saslauthd
sed -i -e 's/^START=.*/START=yes/' \
  -e 's|^OPTIONS=.*|OPTIONS="-c -m /var/spool/postfix/var/run/saslauthd -r"|' /etc/default/saslauthd
grep -q '^START=yes' /etc/default/saslauthd || echo 'START=yes' >>/etc/default/saslauthd
cat >/etc/pam.d/smtp <<'PAM'
auth    required   pam_mysql.so user=mail_admin passwd=mail_admin_password host=127.0.0.1 db=mail_system table=users usercolumn=email passwdcolumn=password crypt=1
account sufficient pam_mysql.so user=mail_admin passwd=mail_admin_password host=127.0.0.1 db=mail_system table=users usercolumn=email passwdcolumn=password crypt=1
PAM
cat >/etc/postfix/sasl/smtpd.conf <<'SASL'
pwcheck_method: saslauthd
mech_list: plain login
allow_plaintext: true
auxprop_plugin: mysql
sql_hostnames: 127.0.0.1
sql_user: mail_admin
sql_passwd: mail_admin_password
sql_database: mail_system
sql_select: select password from users where email = '%u'
SASL
adduser postfix sasl >/dev/null
systemctl restart postfix
systemctl enable saslauthd >/dev/null 2>&1 || true
systemctl restart saslauthd

# 5. Courier with authmysql
sed -i 's/^authmodulelist=.*/authmodulelist="authmysql"/' /etc/courier/authdaemonrc
# "Edit authmysqlrc as follows": each of the tutorial's settings replaces the packaged one
# (or is added before the sysconftool marker section, which authmysql requires); the
# packaged MYSQL_OPT stays, and MYSQL_NAME_FIELD (a `name` column the seed's table lacks)
# is commented out.
cp -n /etc/courier/authmysqlrc /etc/courier/authmysqlrc.dist
awk 'FNR == NR { k = $1; v[k] = $0; order[++n] = k; next }
  /^##NAME: MARKER/ && !added { for (i = 1; i <= n; i++) if (!(order[i] in done)) print v[order[i]]; added = 1 }
  /^MYSQL_NAME_FIELD/ { print "#" $0; next }
  /^MYSQL_[A-Z_]+[ \t]/ && ($1 in v) { print v[$1]; done[$1] = 1; next }
  { print }' - /etc/courier/authmysqlrc.dist >/etc/courier/authmysqlrc <<'AUTH'
MYSQL_SERVER localhost
MYSQL_USERNAME mail_admin
MYSQL_PASSWORD mail_admin_password
MYSQL_PORT 0
MYSQL_DATABASE mail_system
MYSQL_USER_TABLE users
MYSQL_CRYPT_PWFIELD password
MYSQL_UID_FIELD 5000
MYSQL_GID_FIELD 5000
MYSQL_LOGIN_FIELD email
MYSQL_HOME_FIELD "/home/vmail"
MYSQL_MAILDIR_FIELD CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')
AUTH
grep -q '^MYSQL_MAILDIR_FIELD' /etc/courier/authmysqlrc || { echo "seed: authmysqlrc not edited" >&2; exit 1; }
chmod 0660 /etc/courier/authmysqlrc
chown daemon:daemon /etc/courier/authmysqlrc 2>/dev/null || true
rm -f /etc/courier/imapd.pem /etc/courier/pop3d.pem
sed -i "s/^CN=.*/CN=$HOSTNAME_FQDN/" /etc/courier/imapd.cnf /etc/courier/pop3d.cnf
(cd /etc/courier && mkimapdcert >/dev/null 2>&1 && mkpop3dcert >/dev/null 2>&1)
for unit in courier-authdaemon courier-imap courier-imap-ssl courier-pop courier-pop-ssl; do
  systemctl restart "$unit"
done

# 6. aliases
cat >/etc/aliases <<'AL'
postmaster: root
root: post@raecoo.com
AL
newaliases
systemctl restart postfix

# 8. domains and users: the tutorial's sales@raecoo.com, plus what the test sends to
mysql -uroot mail_system <<'SQL'
INSERT INTO domains (domain) VALUES ('raecoo.com');
INSERT INTO users (email, password) VALUES ('sales@raecoo.com', ENCRYPT('password'));
SQL
# "the domain's directory must exist before the first POP3 login"
install -d -o vmail -g vmail /home/vmail/raecoo.com
echo "seed: done"
