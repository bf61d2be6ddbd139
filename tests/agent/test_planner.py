"""The offline planner: targets from a request, findings from real command output, answers."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import pytest

from it0.agent.planner import (
    EVERY_HOST,
    NO_MODEL_NOTICE,
    Finding,
    Host,
    HostResult,
    StepResult,
    Targets,
    choose_remediations,
    clean,
    extract_targets,
    findings,
    no_match_answer,
    no_target_answer,
    render_params,
    summarize,
    verify_answer,
)
from it0.agent.runbooks import Runbook, load_builtin
from it0.inventory.selectors import parse_selector

RUNBOOKS = {runbook.id: runbook for runbook in load_builtin()}

# --- targets ----------------------------------------------------------------------------

FLEET = [
    Host("web-1", {"role": "web", "canary": "true"}, "prod", "eu-1"),
    Host("web-2", {"role": "web"}, "prod", "eu-1"),
    Host("db-1", {"role": "db", "tier": "1"}, "prod", "eu-2"),
    Host("cache-1.eu", {"role": "proxy"}, "prod", "eu-2"),
    Host("stage-web", {"role": "web"}, "staging", None),
    Host("app-3", {"role": "app"}, "dev", None),
]


def _targets(text: str, hosts: list[Host] | None = None) -> Targets:
    targets = extract_targets(text, FLEET if hosts is None else hosts)
    if targets.selector is not None:
        parse_selector(targets.selector)  # always valid for the inventory's grammar
    return targets


@pytest.mark.parametrize(
    ("text", "selector", "names"),
    [
        ("disk is full on web-1", "web-1", ("web-1",)),
        ("WEB-2 is slow", "web-2", ("web-2",)),
        ("check web-1, web-2 and db-1.", "web-1,web-2,db-1", ("web-1", "web-2", "db-1")),
        ("is cache-1.eu down?", "cache-1.eu", ("cache-1.eu",)),
        ("web-1's load is high", "web-1", ("web-1",)),
    ],
)
def test_host_names_in_the_text(text: str, selector: str, names: tuple[str, ...]) -> None:
    targets = _targets(text)
    assert (targets.selector, targets.names) == (selector, names)
    assert targets.how.startswith("named in the request: ")


@pytest.mark.parametrize(
    "text",
    [
        "web-10 is down",  # another name that starts the same
        "see web-1.example.com",  # a longer dotted name
        "xweb-1 is down",
        "cache-1 is slow",  # part of cache-1.eu
    ],
)
def test_names_are_whole_words(text: str) -> None:
    assert not set(_targets(text).names) & {"web-1", "cache-1.eu"}


def test_names_beat_labels_and_selectors() -> None:
    targets = _targets("db-1 and the web servers in prod, env=staging")
    assert targets.selector == "db-1"
    assert targets.names == ("db-1",)


@pytest.mark.parametrize(
    ("text", "selector", "names"),
    [
        ("disk full on env=prod", "env=prod", ("web-1", "web-2", "db-1", "cache-1.eu")),
        ("role=db memory", "role=db", ("db-1",)),
        ("load on role in (web, db)", "role in (web,db)", ("web-1", "web-2", "db-1", "stage-web")),
        ("env=prod,role!=web slow", "env=prod,role!=web", ("db-1", "cache-1.eu")),
        ("cluster==eu-2 time drift.", "cluster==eu-2", ("db-1", "cache-1.eu")),
    ],
)
def test_selector_written_in_the_request(text: str, selector: str, names: tuple[str, ...]) -> None:
    targets = _targets(text)
    assert (targets.selector, targets.names) == (selector, names)
    assert targets.how == f"selector written in the request: {selector}"


def test_written_selector_needs_a_known_key() -> None:
    targets = _targets("see https://wiki.example.com/?page=disk and a=b for why")
    assert targets.selector is None


def test_written_selector_that_matches_nothing_says_so() -> None:
    targets = _targets("disk full on env=qa")
    assert targets.selector == "env=qa"
    assert targets.names == ()
    assert "matches no host" in targets.how


@pytest.mark.parametrize(
    ("text", "selector", "names", "phrase"),
    [
        ("the db hosts are slow", "role=db", ("db-1",), "'db hosts'"),
        ("nginx is down on prod", "env=prod", ("web-1", "web-2", "db-1", "cache-1.eu"), "on prod"),
        ("check all web servers", "role=web", ("web-1", "web-2", "stage-web"), "web servers"),
        ("time drift in cluster eu-1", "cluster=eu-1", ("web-1", "web-2"), "cluster eu-1"),
        ("the eu-2 cluster has OOM kills", "cluster=eu-2", ("db-1", "cache-1.eu"), "eu-2 cluster"),
        ("disk full on the dbs", "role=db", ("db-1",), "on the dbs"),
        ("the proxies are slow on staging", "env=staging", ("stage-web",), "on staging"),
        ("restart on all proxies", "role=proxy", ("cache-1.eu",), "all proxies"),
        ("web servers in staging", "role=web,env=staging", ("stage-web",), "in staging"),
        ("the web and db hosts", "role in (web,db)", ("web-1", "web-2", "db-1", "stage-web"), ""),
        ("STAGING servers are slow", "env=staging", ("stage-web",), "STAGING servers"),
    ],
)
def test_label_values_environments_and_clusters(
    text: str, selector: str, names: tuple[str, ...], phrase: str
) -> None:
    targets = _targets(text)
    assert (targets.selector, targets.names) == (selector, names)
    assert targets.how.startswith(f"hosts with {selector} (")
    assert phrase in targets.how


def test_labels_that_select_nothing_keep_the_selector() -> None:
    targets = _targets("the db hosts in staging")
    assert targets.selector == "role=db,env=staging"
    assert targets.names == ()
    assert "no host matches" in targets.how


@pytest.mark.parametrize(
    "text",
    [
        "is it true that the load is high",  # canary=true
        "tier 1 support says the app is slow",  # tier=1, role=app without a host word
        "the web is slow",  # no host word next to it
        "prod is on fire",  # an environment without a host word
        "we run a db backup at night",
        "why is the cache slow",
    ],
)
def test_no_false_positives_from_common_words(text: str) -> None:
    targets = _targets(text)
    assert targets.selector is None
    assert targets.names == ()
    assert targets.how == "no host was named in the request (the inventory has 6 hosts)"


@pytest.mark.parametrize(
    "text",
    [
        "disk full on all hosts",
        "check every server",
        "is time drifting everywhere?",
        "zombies across the fleet",
        "all of the machines are slow",
    ],
)
def test_all_hosts(text: str) -> None:
    targets = _targets(text)
    assert targets.selector == EVERY_HOST
    assert targets.names == tuple(host.name for host in FLEET)
    assert targets.how.startswith("every host (")
    assert parse_selector(EVERY_HOST).matches({"name": "anything"}, {})


def test_labels_beat_all_hosts() -> None:
    assert _targets("all servers in prod").selector == "env=prod"


def test_single_host_is_the_fallback() -> None:
    only = [Host("lonely", {}, "prod", None)]
    targets = _targets("disk is full", only)
    assert (targets.selector, targets.names) == ("lonely", ("lonely",))
    assert "only host" in targets.how


def test_nothing_named_with_no_or_several_hosts() -> None:
    assert _targets("disk is full", []) == Targets(
        None, (), "no host was named in the request (the inventory has 0 hosts)"
    )
    assert _targets("all servers", []).selector is None
    assert _targets("disk is full").selector is None


def test_a_value_under_several_keys_prefers_env_then_cluster_then_most_hosts() -> None:
    hosts = [
        Host("a", {"role": "db"}, "prod", None),
        Host("b", {"tier": "db"}, "prod", None),
        Host("c", {"tier": "db"}, "prod", None),
        Host("d", {"role": "prod"}, "prod", "blue"),
        Host("e", {"color": "blue"}, "prod", "green"),
    ]
    assert _targets("the db hosts", hosts).selector == "tier=db"
    assert _targets("the prod hosts", hosts).selector == "env=prod"
    assert _targets("the blue hosts", hosts).selector == "cluster=blue"
    # a hint next to the value decides
    assert _targets("in cluster green", hosts).selector == "cluster=green"


def test_labels_named_like_fields_are_ignored() -> None:
    hosts = [Host("a", {"status": "broken"}, "prod", None), Host("b", {}, "prod", None)]
    assert _targets("the broken hosts", hosts).selector is None


# --- findings per runbook ---------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    stdout: str = ""
    exit_status: int | None = 0
    stderr: str = ""


@dataclass(frozen=True)
class Case:
    runbook: str
    name: str
    outputs: dict[str, Out]
    expected: list[tuple[str, str]]  # (severity, message), in the order findings() returns


def _run(runbook: Runbook, outputs: dict[str, Out], host: str = "web-1") -> list[Finding]:
    steps = tuple(
        StepResult(name, "(command)", out.exit_status, out.stdout, out.stderr)
        for name, out in outputs.items()
    )
    return findings(runbook, [HostResult(host, steps)])


DF = """\
Filesystem     Type      Size  Used Avail Use% Mounted on
udev           devtmpfs  3.9G     0  3.9G   0% /dev
tmpfs          tmpfs     795M  1.2M  794M   1% /run
/dev/sda1      ext4       98G   95G  3.0G  97% /
/dev/loop0     squashfs   64M   64M     0 100% /snap/core20/2015
/dev/sdb1      ext4      492G  410G   57G  88% /var/lib/postgresql
/dev/sda15     vfat      105M  6.1M   99M   6% /boot/efi
"""
DF_OK = """\
Filesystem     Type      Size  Used Avail Use% Mounted on
udev           devtmpfs  3.9G     0  3.9G   0% /dev
tmpfs          tmpfs     795M  1.2M  794M   1% /run
/dev/sda1      ext4       98G   31G   63G  33% /
/dev/loop0     squashfs   64M   64M     0 100% /snap/core20/2015
/dev/sda15     vfat      105M  6.1M   99M   6% /boot/efi
"""
LSOF = """\
COMMAND     PID     USER   FD   TYPE DEVICE   SIZE/OFF NLINK    NODE NAME
rsyslogd    612   syslog    7w   REG  253,0 5242880000     0 1310797 /var/log/syslog.1 (deleted)
php-fpm8  23001 www-data    3u   REG  253,0       4096     0 1310801 /tmp/.ZendSem.x1 (deleted)
"""
IOSTAT = """\
Linux 6.1.0-18-amd64 (db-1) \t03/14/2024 \t_x86_64_\t(8 CPU)

Device            r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz     w/s     wkB/s   wrqm/s  \
%wrqm w_await wareq-sz     d/s     dkB/s   drqm/s  %drqm d_await dareq-sz     f/s f_await  \
aqu-sz  %util
nvme0n1          2.10     85.33     0.02   0.95    0.31    40.63    9.87    213.45     4.11  \
29.40    0.52    21.63    0.00      0.00     0.00   0.00    0.00     0.00    0.93    0.41    \
0.01   0.84
sda             15.00    480.00     0.00   0.00   48.20    32.00  412.00  98304.00    12.00   \
2.83  131.70   238.60    0.00      0.00     0.00   0.00    0.00     0.00    0.00    0.00   \
54.98  99.80

Device            r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz     w/s     wkB/s   wrqm/s  \
%wrqm w_await wareq-sz     d/s     dkB/s   drqm/s  %drqm d_await dareq-sz     f/s f_await  \
aqu-sz  %util
sda             12.00    384.00     0.00   0.00   51.00    32.00  398.00  97200.00    10.00   \
2.45  140.10   244.20    0.00      0.00     0.00   0.00    0.00     0.00    0.00    0.00   \
56.12  97,20
"""
IOSTAT_OK = """\
Linux 6.1.0-18-amd64 (db-1) \t03/14/2024 \t_x86_64_\t(8 CPU)

Device            r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz     w/s     wkB/s   wrqm/s  \
%wrqm w_await wareq-sz     d/s     dkB/s   drqm/s  %drqm d_await dareq-sz     f/s f_await  \
aqu-sz  %util
sda              1.00      4.00     0.00   0.00    0.50     4.00   12.00    140.00     1.00   \
7.69    1.10    11.67    0.00      0.00     0.00   0.00    0.00     0.00    0.00    0.00   \
0.01   1.20
"""
VMSTAT_HEAD = """\
procs -----------memory---------- ---swap-- -----io---- -system-- ------cpu-----
 r  b   swpd   free   buff  cache   si   so    bi    bo   in   cs us sy id wa st
"""
VMSTAT_IO = VMSTAT_HEAD + (
    " 1  6      0 412344  81236 6123400    0    0  1204 98012 2210 4120  3  4 48 45  0\n"
    " 0  7      0 411020  81236 6124100    0    0   980 97200 2105 3988  2  3 50 45  0\n"
)
VMSTAT_OK = VMSTAT_HEAD + (
    " 0  0      0 6123456 234567 3456789    0    0     5    20  100  200  2  1 97  0  0\n"
    " 1  0      0 6123400 234567 3456790    0    0     0    12  180  310  1  0 99  0  0\n"
)
# procps-ng 4.0.4 (Debian 13) adds a "gu" column
VMSTAT_CPU = (
    "procs -----------memory---------- ---swap-- -----io---- -system-- -------cpu-------\n"
    " r  b   swpd   free   buff  cache   si   so    bi    bo   in   cs us sy id wa st gu\n"
    "12  0      0 812344  81236 6123400    0    0     3    40 9210 14120 79 5  0  1 15  0\n"
)
VMSTAT_SWAP = VMSTAT_HEAD + (
    " 3  2 4193280  98120   1024  61240 2048 3120  2200  3300 4210 6120 10 12 30 48  0\n"
)
PIDSTAT = """\
Linux 6.1.0-18-amd64 (db-1) \t03/14/2024 \t_x86_64_\t(8 CPU)

10:15:01      UID       PID   kB_rd/s   kB_wr/s kB_ccwr/s iodelay  Command
10:15:02        0      4321      0.00  98304.00      0.00       0  rsync

Average:      UID       PID   kB_rd/s   kB_wr/s kB_ccwr/s iodelay  Command
Average:        0      4321      0.00  97280.00      0.00       0  rsync
Average:      108       812  61440.00    310.50      0.00       3  postgres
Average:        0       612      0.00     12.00      0.00       0  rsyslogd
"""
SYSTEMCTL_FAILED = """\
  UNIT           LOAD   ACTIVE SUB    DESCRIPTION
\u25cf backup.service loaded failed failed Nightly backup of /srv
* certbot.service loaded failed failed Certbot

LOAD   = Reflects whether the unit definition was properly loaded.
ACTIVE = The high-level unit activation state, i.e. generalization of SUB.
SUB    = The low-level unit activation state, values depend on unit type.
2 loaded units listed.
"""
UNIT_STATUS = """\
\u00d7 backup.service - Nightly backup of /srv
     Loaded: loaded (/etc/systemd/system/backup.service; static)
     Active: failed (Result: exit-code) since Thu 2024-03-14 02:00:03 UTC; 8h ago
TriggeredBy: \u25cf backup.timer
    Process: 12345 ExecStart=/usr/local/bin/backup.sh (code=exited, status=1/FAILURE)
   Main PID: 12345 (code=exited, status=1/FAILURE)
        CPU: 1.204s

Mar 14 02:00:03 web-1 systemd[1]: backup.service: Failed with result 'exit-code'.
"""
UNIT_STATUS_OK = """\
\u25cb backup.service - Nightly backup of /srv
     Loaded: loaded (/etc/systemd/system/backup.service; static)
     Active: inactive (dead) since Thu 2024-03-14 02:00:41 UTC; 8h ago
    Process: 12345 ExecStart=/usr/local/bin/backup.sh (code=exited, status=0/SUCCESS)
   Main PID: 12345 (code=exited, status=0/SUCCESS)
"""
UNIT_LOG = """\
Mar 14 02:00:01 web-1 systemd[1]: Starting backup.service - Nightly backup of /srv...
Mar 14 02:00:03 web-1 backup.sh[12345]: rsync: change_dir "/srv/data" failed: No such file \
or directory (2)
Mar 14 02:00:03 web-1 systemd[1]: backup.service: Main process exited, code=exited, \
status=1/FAILURE
Mar 14 02:00:03 web-1 systemd[1]: backup.service: Failed with result 'exit-code'.
Mar 14 02:00:03 web-1 systemd[1]: Failed to start backup.service - Nightly backup of /srv.
Mar 14 02:00:09 web-1 systemd[1]: backup.service: Start request repeated too quickly.
"""
CERTBOT = """\

- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Found the following certs:
  Certificate Name: www.example.com
    Serial Number: 3a1f7e0c9b2d4e5f6a7b8c9d0e1f2a3b4c5
    Key Type: ECDSA
    Domains: www.example.com example.com
    Expiry Date: 2024-03-20 08:12:00+00:00 (VALID: 5 days)
    Certificate Path: /etc/letsencrypt/live/www.example.com/fullchain.pem
    Private Key Path: /etc/letsencrypt/live/www.example.com/privkey.pem
  Certificate Name: old.example.com
    Serial Number: 4b2e8f1d0c3e5f6a7b8c9d0e1f2a3b4c5d6
    Key Type: RSA
    Domains: old.example.com
    Expiry Date: 2024-03-01 08:12:00+00:00 (INVALID: EXPIRED)
    Certificate Path: /etc/letsencrypt/live/old.example.com/fullchain.pem
    Private Key Path: /etc/letsencrypt/live/old.example.com/privkey.pem
- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
"""
TIMERS = "\n".join(
    [
        "NEXT                        LEFT          LAST                        PASSED       "
        "UNIT                         ACTIVATES",
        "Thu 2024-03-14 20:53:00 UTC 10h left      Thu 2024-03-14 08:01:02 UTC 2h ago       "
        "apt-daily.timer              apt-daily.service",
        "-                           -             Wed 2024-01-10 03:12:00 UTC 2 months ago "
        "certbot.timer                certbot.service",
        "",
        "2 timers listed.",
        "",
    ]
)
TIMERS_OK = "\n".join(
    [
        "NEXT                        LEFT          LAST                        PASSED       "
        "UNIT                         ACTIVATES",
        "Thu 2024-03-14 21:17:44 UTC 11h left      Thu 2024-03-14 09:02:11 UTC 1h ago       "
        "certbot.timer                certbot.service",
        "",
        "1 timers listed.",
        "",
    ]
)
DIG_NXDOMAIN = """\

; <<>> DiG 9.18.24-1-Debian <<>> +time=2 +tries=1 db.example.com
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 41231
;; flags: qr rd ra; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 65494
;; QUESTION SECTION:
;db.example.com.\t\t\tIN\tA

;; AUTHORITY SECTION:
example.com.\t\t3600\tIN\tSOA\tns1.example.com. hostmaster.example.com. 2024031401 7200 3600 \
1209600 3600

;; Query time: 24 msec
;; SERVER: 127.0.0.53#53(127.0.0.53) (UDP)
;; WHEN: Thu Mar 14 10:15:01 UTC 2024
;; MSG SIZE  rcvd: 98
"""
DIG_OK = """\

; <<>> DiG 9.18.24-1-Debian <<>> +time=2 +tries=1 db.example.com
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 5120
;; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1

;; QUESTION SECTION:
;db.example.com.\t\t\tIN\tA

;; ANSWER SECTION:
db.example.com.\t\t300\tIN\tA\t10.0.0.12

;; Query time: 12 msec
;; SERVER: 127.0.0.53#53(127.0.0.53) (UDP)
;; WHEN: Thu Mar 14 10:15:01 UTC 2024
;; MSG SIZE  rcvd: 59
"""
DIG_TIMEOUT = """\
;; communications error to 127.0.0.53#53: timed out
;; communications error to 127.0.0.53#53: timed out

; <<>> DiG 9.18.24-1-Debian <<>> +time=2 +tries=1 db.example.com
;; global options: +cmd
;; no servers could be reached
"""
HOSTS_OK = """\
127.0.0.1\tlocalhost
127.0.1.1\tweb-1.example.com\tweb-1

::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""
DF_INODES = """\
Filesystem      Inodes   IUsed   IFree IUse% Mounted on
udev            998765     456  998309    1% /dev
tmpfs          1015234     789 1014445    1% /run
/dev/sda1      6553600 6553600       0  100% /
/dev/sdb1     32768000 2801000 29967000    9% /srv
/dev/sda15           0       0       0     - /boot/efi
"""
DF_INODES_OK = """\
Filesystem      Inodes   IUsed   IFree IUse% Mounted on
udev            998765     456  998309    1% /dev
/dev/sda1      6553600  412311 6141289    7% /
/dev/sda15           0       0       0     - /boot/efi
"""
LOGROTATE = """\
warning: logrotate in debug mode does nothing except printing debug messages!  Consider using \
verbose mode (-v) instead if this is not what you want.

reading config file /etc/logrotate.conf
including /etc/logrotate.d
reading config file app
Reading state from file: /var/lib/logrotate/status
Handling 1 logs

rotating pattern: /var/log/app/*.log  after 1 days (7 rotations)
empty log files are rotated, old logs are removed
considering log /var/log/app/app.log
  Now: 2024-03-14 10:15
  Last rotated at 2024-03-01 00:00
  log needs rotating
rotating log /var/log/app/app.log, log->rotateCount is 7
"""
LOGROTATE_OK = """\
warning: logrotate in debug mode does nothing except printing debug messages!  Consider using \
verbose mode (-v) instead if this is not what you want.

reading config file /etc/logrotate.conf
rotating pattern: /var/log/app/*.log  after 1 days (7 rotations)
considering log /var/log/app/app.log
  Now: 2024-03-14 10:15
  Last rotated at 2024-03-14 00:00
  log does not need rotating (log has been rotated at 2024-03-14 00:00, which is less than a \
day ago)
"""
NFT = """\
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiif "lo" accept
\t\ttcp dport { 22, 80, 443 } accept
\t\ttcp dport 5432 ip saddr != 10.0.0.0/8 drop
\t}
}
"""
NFT_OK = """\
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport { 22, 80, 443, 5432 } accept
\t}
}
"""
NGINX_FAILED = """\
\u00d7 nginx.service - A high performance web server and a reverse proxy server
     Loaded: loaded (/lib/systemd/system/nginx.service; enabled; preset: enabled)
     Active: failed (Result: exit-code) since Thu 2024-03-14 10:01:02 UTC; 5min ago
       Docs: man:nginx(8)
    Process: 2345 ExecStartPre=/usr/sbin/nginx -t -q -g daemon on; master_process on; \
(code=exited, status=1/FAILURE)
        CPU: 12ms
"""
NGINX_STOPPED = """\
\u25cb nginx.service - A high performance web server and a reverse proxy server
     Loaded: loaded (/lib/systemd/system/nginx.service; disabled; preset: enabled)
     Active: inactive (dead)
       Docs: man:nginx(8)
"""
NGINX_OK = """\
\u25cf nginx.service - A high performance web server and a reverse proxy server
     Loaded: loaded (/lib/systemd/system/nginx.service; enabled; preset: enabled)
     Active: active (running) since Thu 2024-03-14 09:12:44 UTC; 1h 2min ago
       Docs: man:nginx(8)
    Process: 811 ExecStartPre=/usr/sbin/nginx -t -q -g daemon on; master_process on; \
(code=exited, status=0/SUCCESS)
   Main PID: 812 (nginx)
"""
TIMEDATECTL = """\
               Local time: Thu 2024-03-14 10:15:01 UTC
           Universal time: Thu 2024-03-14 10:15:01 UTC
                 RTC time: Thu 2024-03-14 10:14:12
                Time zone: Etc/UTC (UTC, +0000)
System clock synchronized: no
              NTP service: inactive
          RTC in local TZ: yes
"""
TIMEDATECTL_OK = """\
               Local time: Thu 2024-03-14 10:15:01 UTC
           Universal time: Thu 2024-03-14 10:15:01 UTC
                 RTC time: Thu 2024-03-14 10:15:01
                Time zone: Etc/UTC (UTC, +0000)
System clock synchronized: yes
              NTP service: active
          RTC in local TZ: no
"""
TIMESYNC = """\
       Server: 185.125.190.56 (ntp.ubuntu.com)
Poll interval: 34min 8s (min: 32s; max 34min 8s)
         Leap: normal
      Version: 4
      Stratum: 2
    Reference: C0248F97
    Precision: 1us (-25)
Root distance: 1.253ms (max: 5s)
       Offset: {offset}
        Delay: 36.214ms
       Jitter: 453us
 Packet count: {packets}
    Frequency: -4.312ppm
"""

CASES = [
    Case(
        "disk-full",
        "full",
        {
            "Usage per filesystem": Out(DF),
            "Largest directories": Out(
                "95G\t/\n40G\t/var\n12G\t/var/log\n2.1G\t/var/cache\n1.1G\t/usr\n"
            ),
            "Largest files": Out(
                "8589934592\t/var/backups/db.dump\n"
                "1073741824\t/var/lib/systemd/coredump/core.php-fpm8.2.33.1a2b.1710400000.zst\n"
            ),
            "Deleted but still open files": Out(LSOF),
            "Journal size": Out("Archived and active journals take up 3.9G in the file system.\n"),
        },
        [
            ("critical", "/ is 97% full (/dev/sda1, ext4)"),
            ("warning", "/var/lib/postgresql is 88% full (/dev/sdb1, ext4)"),
            ("warning", "/var/log takes 12G"),
            (
                "warning",
                "rsyslogd (pid 612) still holds the deleted file /var/log/syslog.1 open "
                "(5242880000 bytes)",
            ),
            ("warning", "the systemd journal takes 3.9G"),
            ("info", "/var/cache takes 2.1G"),
            ("info", "/var/backups/db.dump is larger than 5 GiB (8589934592 bytes)"),
            (
                "info",
                "core dump /var/lib/systemd/coredump/core.php-fpm8.2.33.1a2b.1710400000.zst "
                "takes space",
            ),
        ],
    ),
    Case(
        "disk-full",
        "healthy",
        {
            "Usage per filesystem": Out(DF_OK),
            "Largest directories": Out("31G\t/\n12G\t/usr\n2.2G\t/var\n812M\t/var/log\n"),
            "Largest files": Out("", 0),
            "Deleted but still open files": Out(
                "COMMAND PID USER FD TYPE DEVICE SIZE/OFF NLINK NODE NAME\n", 1
            ),
            "Journal size": Out(
                "Archived and active journals take up 184.0M in the file system.\n"
            ),
        },
        [],
    ),
    Case(
        "disk-full",
        "journal in terabytes",
        {"Journal size": Out("Archived and active journals take up 1.2T in the file system.\n")},
        [("critical", "the systemd journal takes 1.2T")],
    ),
    Case(
        "disk-io-latency",
        "saturated",
        {
            "Device latency and utilisation": Out(IOSTAT),
            "I/O wait and blocked tasks": Out(VMSTAT_IO),
            "I/O pressure": Out(
                "some avg10=61.20 avg60=55.10 avg300=40.02 total=912345678\n"
                "full avg10=23.50 avg60=20.00 avg300=12.41 total=512345678\n"
            ),
            "Processes doing I/O": Out(PIDSTAT),
            "Processes in uninterruptible sleep": Out(
                "    PID STAT WCHAN                            COMMAND\n"
                "   4321 D    io_schedule                      rsync\n"
            ),
            "Kernel I/O errors": Out(
                "[Thu Mar 14 10:01:02 2024] blk_update_request: I/O error, dev sda, sector "
                "123456 op 0x1:(WRITE) flags 0x0 phys_seg 1 prio class 0\n"
                "[Thu Mar 14 10:01:40 2024] INFO: task postgres:812 blocked for more than 120 "
                "seconds.\n"
                "[Thu Mar 14 10:02:00 2024] ata1.00: failed command: WRITE FPDMA QUEUED\n"
                "[Thu Mar 14 10:02:07 2024] nvme nvme0: I/O 123 QID 4 timeout, reset controller\n"
            ),
            "Disk health": Out(
                "smartctl 7.3 2022-02-28 r5338 [x86_64-linux-6.1.0-18-amd64] (local build)\n"
                "Copyright (C) 2002-22, Bruce Allen, Christian Franke, www.smartmontools.org\n\n"
                "=== START OF READ SMART DATA SECTION ===\n"
                "SMART overall-health self-assessment test result: FAILED!\n"
                "Drive failure expected in less than 24 hours. SAVE ALL DATA.\n",
                8,
            ),
        },
        [
            (
                "critical",
                "the kernel logged I/O errors on sda: the disk or its controller is failing",
            ),
            ("critical", "SMART health self-assessment says FAILED: replace the disk"),
            ("warning", "sda is saturated: %util above 90 in an iostat sample"),
            ("warning", "the CPUs spend much of their time waiting for I/O (vmstat wa above 20%)"),
            (
                "warning",
                "all tasks stalled on I/O 23.50% of the last 10 seconds (full avg10 above 10)",
            ),
            ("warning", "rsync (pid 4321) writes 97280.00 kB/s on average"),
            ("warning", "postgres (pid 812) reads 61440.00 kB/s on average"),
            ("warning", "postgres (pid 812) hung for more than 120 s"),
            ("warning", "NVMe commands time out on nvme0"),
            ("warning", "SATA errors or link resets on ata1"),
            ("info", "several processes are blocked on I/O (vmstat b above 4)"),
            ("info", "rsync (pid 4321) waits in uninterruptible sleep (io_schedule)"),
        ],
    ),
    Case(
        "disk-io-latency",
        "healthy",
        {
            "Device latency and utilisation": Out(IOSTAT_OK),
            "I/O wait and blocked tasks": Out(VMSTAT_OK),
            "I/O pressure": Out(
                "some avg10=0.12 avg60=0.30 avg300=0.21 total=12345678\n"
                "full avg10=0.00 avg60=0.10 avg300=0.08 total=9345678\n"
            ),
            "Processes doing I/O": Out(
                "Average:      UID       PID   kB_rd/s   kB_wr/s kB_ccwr/s iodelay  Command\n"
                "Average:        0       612      0.00     12.00      0.00       0  rsyslogd\n"
            ),
            "Processes in uninterruptible sleep": Out(
                "    PID STAT WCHAN                            COMMAND\n"
            ),
            "Kernel I/O errors": Out("", 0),
            "Disk health": Out(
                "=== START OF READ SMART DATA SECTION ===\n"
                "SMART overall-health self-assessment test result: PASSED\n"
            ),
        },
        [],
    ),
    Case(
        "disk-io-latency",
        "SAS disk",
        {
            "Disk health": Out(
                "SMART Health Status: HARDWARE IMPENDING FAILURE GENERAL HARD DRIVE\n"
            )
        },
        [
            (
                "critical",
                "SMART health status is HARDWARE IMPENDING FAILURE GENERAL HARD DRIVE: "
                "replace the disk",
            )
        ],
    ),
    Case(
        "high-load",
        "overloaded",
        {
            "Load average": Out(
                " 10:15:01 up 12 days,  3:04,  2 users,  load average: 37.52, 35.10, 30.02\n"
            ),
            "CPU count": Out("8\n"),
            "CPU pressure": Out(
                "some avg10=45.12 avg60=40.01 avg300=30.00 total=123456789\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            ),
            "Top CPU consumers": Out(
                "    PID    PPID STAT %CPU %MEM     ELAPSED COMMAND\n"
                "   4321       1 Rsl   398  2.1    02:13:45 java\n"
                "   1234     987 R    99.8  0.1       05:02 python3\n"
                "    812       1 Ss    0.3  1.2 12-03:04:05 postgres\n"
            ),
            "Run queue, I/O wait and steal": Out(VMSTAT_CPU),
        },
        [
            ("warning", "the 1-minute load average 37.52 is above the 8 CPUs"),
            (
                "warning",
                "the 15-minute load average 30.02 is above the 8 CPUs: the overload is not new",
            ),
            (
                "warning",
                "tasks waited for a CPU 45.12% of the last 10 seconds (some avg10 above 20)",
            ),
            ("warning", "java (pid 4321) used 398% CPU on average over the 02:13:45 it has run"),
            ("warning", "python3 (pid 1234) used 99.8% CPU on average over the 05:02 it has run"),
            ("warning", "more tasks are runnable than there are CPUs (vmstat r above 8)"),
            ("warning", "the hypervisor steals CPU time (vmstat st above 10%)"),
        ],
    ),
    Case(
        "high-load",
        "comma locale",
        {
            "Load average": Out(" 10:15:01 up 3 days,  2 users,  load average: 9,52, 3,10, 2,02\n"),
            "CPU count": Out("4\n"),
        },
        [("warning", "the 1-minute load average 9,52 is above the 4 CPUs")],
    ),
    Case(
        "high-load",
        "healthy",
        {
            "Load average": Out(
                " 10:15:01 up 12 days,  3:04,  2 users,  load average: 0.52, 0.58, 0.59\n"
            ),
            "CPU count": Out("8\n"),
            "CPU pressure": Out("some avg10=0.31 avg60=0.40 avg300=0.22 total=12345\n"),
            "Top CPU consumers": Out(
                "    PID    PPID STAT %CPU %MEM     ELAPSED COMMAND\n"
                "    812       1 Ss    2.3  1.2 12-03:04:05 postgres\n"
            ),
            "Run queue, I/O wait and steal": Out(VMSTAT_OK),
        },
        [],
    ),
    Case(
        "high-load",
        "no CPU count, no comparison",
        {"Load average": Out("load average: 37.52, 35.10, 30.02\n")},
        [],
    ),
    Case(
        "memory-pressure",
        "out of memory",
        {
            "Memory and swap totals": Out(
                "               total        used        free      shared  buff/cache   "
                "available\n"
                "Mem:           15853       15210         180          52         463         198\n"
                "Swap:           4095        4095           0\n"
            ),
            "Memory pressure": Out(
                "some avg10=35.20 avg60=30.11 avg300=12.00 total=99123456\n"
                "full avg10=12.80 avg60=10.02 avg300=4.00 total=51234567\n"
            ),
            "OOM killer events": Out(
                "Mar 14 10:01:02 web-1 kernel: java invoked oom-killer: "
                "gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0\n"
                "Mar 14 10:01:02 web-1 kernel: oom-kill:constraint=CONSTRAINT_NONE,"
                "nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
                "task_memcg=/system.slice/java-app.service,task=java,pid=4321,uid=1001\n"
                "Mar 14 10:01:02 web-1 kernel: Out of memory: Killed process 4321 (java) "
                "total-vm:8123456kB, anon-rss:6123456kB, file-rss:0kB, shmem-rss:0kB, "
                "UID:1001 pgtables:12345kB oom_score_adj:0\n"
            ),
            "Largest processes by resident memory": Out(
                "    PID    PPID   RSS    VSZ     ELAPSED COMMAND\n"
                "   4321       1 6123456 8123456 3-02:11:05 java\n"
                "    812       1 412000 1212000 12-03:04:05 postgres\n"
            ),
            "Swap activity": Out(VMSTAT_SWAP),
        },
        [
            ("critical", "only 198 MiB of 15853 MiB memory is available"),
            (
                "critical",
                "all tasks stalled waiting for memory 12.80% of the last 10 seconds "
                "(full avg10 above 5)",
            ),
            ("critical", "the kernel killed java (pid 4321) because memory ran out"),
            ("warning", "swap is nearly full: 4095 of 4095 MiB used"),
            (
                "warning",
                "tasks waited for memory 35.20% of the last 10 seconds (some avg10 above 20)",
            ),
            ("warning", "the OOM kill hit java-app.service"),
            ("warning", "the machine is swapping out (vmstat so above 100 KiB/s)"),
            ("warning", "the machine is swapping in (vmstat si above 100 KiB/s)"),
            ("info", "java (pid 4321) has 6123456 KiB resident, more than 4 GiB"),
        ],
    ),
    Case(
        "memory-pressure",
        "healthy",
        {
            "Memory and swap totals": Out(
                "               total        used        free      shared  buff/cache   "
                "available\n"
                "Mem:           15853        4210        8180          52        3463       11198\n"
                "Swap:              0           0           0\n"
            ),
            "Memory pressure": Out(
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n"
            ),
            "OOM killer events": Out("", 1),
            "Largest processes by resident memory": Out(
                "    PID    PPID   RSS    VSZ     ELAPSED COMMAND\n"
                "    812       1 412000 1212000 12-03:04:05 postgres\n"
            ),
            "Swap activity": Out(VMSTAT_OK),
        },
        [],
    ),
    Case(
        "open-files",
        "at the limit",
        {
            "System-wide file handles": Out("1048000\t0\t1048576\n"),
            "Process limits": Out(
                "Limit                     Soft Limit           Hard Limit           Units     \n"
                "Max cpu time              unlimited            unlimited            seconds   \n"
                "Max stack size            8388608              unlimited            bytes     \n"
                "Max processes             63432                63432                processes \n"
                "Max open files            1024                 524288               files     \n"
                "Max locked memory         8388608              8388608              bytes     \n"
            ),
            "Process descriptors in use": Out("1024\n"),
            "What the process holds open": Out("  15873 IPv4\n    212 REG\n     12 unix\n"),
            "Limit configured for the service": Out("LimitNOFILE=1024\nMainPID=812\n"),
            "Errors in the service log": Out("37\n"),
        },
        [
            ("critical", "1048000 of the 1048576 system-wide file handles are in use"),
            (
                "warning",
                "the process holds 15873 open descriptors of type IPv4: a leak is likely",
            ),
            ("warning", "systemd lets the service open at most 1024 files (LimitNOFILE)"),
            ("warning", 'the service logged "too many open files" 37 times in the last hour'),
            ("info", "the process may open only 1024 files (soft limit; hard limit 524288)"),
            ("info", "the process has 1024 descriptors open: compare with its soft limit"),
        ],
    ),
    Case(
        "open-files",
        "healthy",
        {
            "System-wide file handles": Out("12864\t0\t9223372036854775807\n"),
            "Process limits": Out(
                "Max open files            65536                65536                files     \n"
            ),
            "Process descriptors in use": Out("57\n"),
            "What the process holds open": Out("     31 REG\n     12 IPv4\n      4 unix\n"),
            "Limit configured for the service": Out("LimitNOFILE=524288\nMainPID=812\n"),
            "Errors in the service log": Out("0\n", 1),
        },
        [],
    ),
    Case(
        "cert-expiry",
        "expiring",
        {
            "Certificate served on the port": Out(
                "subject=CN = www.example.com\n"
                "issuer=C = US, O = Let's Encrypt, CN = R3\n"
                "notBefore=Dec 21 08:12:01 2023 GMT\n"
                "notAfter=Mar 20 08:12:00 2024 GMT\n"
            ),
            "Certificate file on disk": Out(
                "", 1, "Could not open file or uri for loading certificate from /etc/x.pem\n"
            ),
            "Expires within 14 days": Out("Certificate will expire\n", 1),
            "Certbot certificates": Out(CERTBOT),
            "Renewal timers": Out(TIMERS),
        },
        [
            ("critical", "the certificate file expires within 14 days, or has expired"),
            ("critical", "a certbot certificate expired on 2024-03-01 08:12:00+00:00"),
            ("warning", "the certificate file could not be read (exit status 1)"),
            ("warning", "a certbot certificate expires in 5 days (2024-03-20 08:12:00+00:00)"),
            ("warning", "certbot.timer is not scheduled: automatic renewal does not run"),
            ("info", "the served certificate is valid until Mar 20 08:12:00 2024 GMT"),
        ],
    ),
    Case(
        "cert-expiry",
        "healthy",
        {
            "Expires within 14 days": Out("Certificate will not expire\n"),
            "Certbot certificates": Out(
                "Found the following certs:\n"
                "  Certificate Name: www.example.com\n"
                "    Expiry Date: 2024-06-12 08:12:00+00:00 (VALID: 89 days)\n"
            ),
            "Renewal timers": Out(TIMERS_OK),
        },
        [],
    ),
    Case(
        "cert-expiry",
        "nothing served",
        {
            "Certificate served on the port": Out(
                "", 1, "Could not read certificate from <stdin>\nUnable to load certificate\n"
            ),
            "Certbot certificates": Out(
                "    Expiry Date: 2024-03-14 20:00:00+00:00 (VALID: 9 hour(s))\n"
            ),
        },
        [
            ("critical", "a certbot certificate expires within hours (2024-03-14 20:00:00+00:00)"),
            (
                "warning",
                "no certificate could be read from the port (exit status 1): nothing speaks "
                "TLS there or the handshake failed",
            ),
        ],
    ),
    Case(
        "dns-resolution",
        "name does not exist",
        {
            "Resolve through the system": Out("", 2),
            "Resolver configuration": Out("nameserver 127.0.0.53\noptions edns0 trust-ad\n"),
            "systemd-resolved status": Out("", 1, "Failed to get global data: Unit not found\n"),
            "Ask the configured nameserver": Out(DIG_NXDOMAIN),
            "Ask another nameserver": Out(DIG_NXDOMAIN.replace("127.0.0.53", "1.1.1.1")),
            "Static entries": Out(HOSTS_OK + "10.0.0.99\tdb.example.com db\n"),
        },
        [
            (
                "critical",
                "the system resolver finds no address for the name (getent exit status 2)",
            ),
            ("critical", "the configured nameserver answers NXDOMAIN"),
            ("warning", "the configured nameserver's answer holds no address records (ANSWER: 0)"),
            (
                "warning",
                "the other nameserver answers NXDOMAIN as well: the record itself may be "
                "missing or broken",
            ),
            (
                "info",
                "resolvectl failed (exit status 1): systemd-resolved is not running or not used",
            ),
            ("info", "/etc/hosts maps db.example.com db to 10.0.0.99, whatever DNS says"),
        ],
    ),
    Case(
        "dns-resolution",
        "local resolver down",
        {
            "Ask the configured nameserver": Out(DIG_TIMEOUT, 9),
            "Ask another nameserver": Out(
                ";; communications error to 1.1.1.1#53: timed out\n"
                ";; no servers could be reached\n",
                9,
            ),
        },
        [
            (
                "critical",
                "the local resolver systemd-resolved (127.0.0.53) does not answer: timed out",
            ),
            ("critical", "no configured nameserver answered"),
            (
                "warning",
                "the other nameserver does not answer: outgoing DNS (port 53) may be blocked",
            ),
        ],
    ),
    Case(
        "dns-resolution",
        "healthy",
        {
            "Resolve through the system": Out(
                "10.0.0.12       STREAM db.example.com\n10.0.0.12       DGRAM  \n"
            ),
            "systemd-resolved status": Out("Global\n       Protocols: +LLMNR +mDNS\n"),
            "Ask the configured nameserver": Out(DIG_OK),
            "Ask another nameserver": Out(DIG_OK.replace("127.0.0.53", "1.1.1.1")),
            "Static entries": Out(HOSTS_OK),
        },
        [],
    ),
    Case(
        "failed-unit",
        "failed backup",
        {
            "Failed units": Out(SYSTEMCTL_FAILED),
            "Unit status": Out(
                "Warning: The unit file, source configuration file or drop-ins of "
                "backup.service changed on disk. Run 'systemctl daemon-reload' to reload units.\n"
                + UNIT_STATUS,
                3,
            ),
            "Unit log for this boot": Out(UNIT_LOG),
            "Result and restarts": Out("Result=exit-code\nNRestarts=5\nExecMainStatus=1\n"),
            "Unit definition": Out(
                "# Warning: backup.service changed on disk, the version systemd has loaded is "
                "outdated.\n"
                "# /etc/systemd/system/backup.service\n[Service]\nType=oneshot\n"
                "ExecStart=/usr/local/bin/backup.sh\n"
            ),
        },
        [
            ("critical", "backup.service has failed"),
            ("critical", "certbot.service has failed"),
            ("critical", "the unit is in the failed state (Result: exit-code)"),
            ("warning", "its process exited with status 1/FAILURE"),
            ("warning", "the unit file changed on disk since systemd loaded it"),
            ("warning", "systemd stopped restarting the unit: start request repeated too quickly"),
            ("warning", "systemd records Result=exit-code"),
            ("warning", "systemd restarted the unit 5 times: it keeps crashing"),
            ("info", "systemd logged the failure: result exit-code"),
            ("info", "the unit's log has error lines just before the failure"),
            ("info", "the main process exited with status 1"),
        ],
    ),
    Case(
        "failed-unit",
        "healthy",
        {
            "Failed units": Out("  UNIT LOAD ACTIVE SUB DESCRIPTION\n\n0 loaded units listed.\n"),
            "Unit status": Out(UNIT_STATUS_OK, 3),
            "Unit log for this boot": Out(
                "Mar 14 02:00:01 web-1 systemd[1]: Starting backup.service...\n"
                "Mar 14 02:00:41 web-1 systemd[1]: backup.service: Deactivated successfully.\n"
                "Mar 14 02:00:41 web-1 systemd[1]: Finished backup.service.\n"
            ),
            "Result and restarts": Out("Result=success\nNRestarts=0\nExecMainStatus=0\n"),
            "Unit definition": Out("# /etc/systemd/system/backup.service\n[Service]\n"),
        },
        [],
    ),
    Case(
        "inode-exhaustion",
        "no inodes",
        {
            "Inode usage per filesystem": Out(DF_INODES),
            "Directories with the most files": Out(
                "5812331 var/lib/php\n  20412 usr/share/doc\n   9120 usr/lib/python3\n"
            ),
            "Age of files in the suspect directory": Out("5790112\n"),
        },
        [
            ("critical", "/ has used 100% of its inodes (/dev/sda1)"),
            ("warning", "/var/lib/php holds 5812331 files"),
            ("info", "5790112 files in the directory are older than the retention age"),
        ],
    ),
    Case(
        "inode-exhaustion",
        "healthy",
        {
            "Inode usage per filesystem": Out(DF_INODES_OK),
            "Directories with the most files": Out(
                "  20412 usr/share/doc\n   9120 usr/lib/python3\n"
            ),
            "Age of files in the suspect directory": Out("12\n"),
        },
        [],
    ),
    Case(
        "log-growth",
        "growing",
        {
            "Largest entries under /var/log": Out(
                "4.2G\t/var/log/app\n3.9G\t/var/log/journal\n812M\t/var/log/syslog\n"
                "1.2T\t/var/log/audit\n"
            ),
            "Journal size": Out("Archived and active journals take up 3.9G in the file system.\n"),
            "What the log says": Out(
                "2024-03-14 10:15:01,123 DEBUG [worker-3] polling queue jobs (0 pending)\n"
                "2024-03-14 10:15:01,124 ERROR [worker-3] connection reset by peer\n"
            ),
            "Rotation dry run": Out("", 0, LOGROTATE),
        },
        [
            ("critical", "/var/log/audit takes 1.2T"),
            ("warning", "/var/log/app takes 4.2G"),
            ("warning", "the systemd journal takes 3.9G"),
            ("info", "the log has DEBUG lines: verbose logging may be on"),
            ("info", "the log has ERROR lines"),
            ("info", "logrotate would rotate a log now: rotation has fallen behind"),
        ],
    ),
    Case(
        "log-growth",
        "healthy",
        {
            "Largest entries under /var/log": Out(
                "312M\t/var/log/journal\n41M\t/var/log/syslog\n1.2M\t/var/log/app\n"
            ),
            "Journal size": Out(
                "Archived and active journals take up 312.0M in the file system.\n"
            ),
            "What the log says": Out("2024-03-14 10:15:01,123 INFO [web] GET /health 200\n"),
            "Rotation dry run": Out("", 0, LOGROTATE_OK),
        },
        [],
    ),
    Case(
        "port-not-listening",
        "refused",
        {
            "Listener on the port": Out(
                "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
                'LISTEN 0      244        127.0.0.1:5432      0.0.0.0:*    users:(("postgres",'
                "pid=812,fd=6))\n"
            ),
            "Try to connect": Out(
                "", 1, "nc: connect to 10.0.0.12 port 5432 (tcp) failed: Connection refused\n"
            ),
            "Service status": Out(NGINX_STOPPED, 3),
            "Service log": Out(
                "Mar 14 10:01:02 db-1 postgresql@15-main[2345]: LOG:  could not bind IPv4 "
                'address "0.0.0.0": Address already in use\n'
            ),
            "Firewall rules": Out(NFT),
        },
        [
            (
                "critical",
                "nothing accepts connections on 10.0.0.12 port 5432 (connection refused)",
            ),
            (
                "critical",
                "the service is not running (Active: inactive): see the service-down runbook",
            ),
            (
                "critical",
                "the service could not bind its address: another process holds the port",
            ),
            ("warning", "port 5432 listens only on 127.0.0.1: other machines cannot connect"),
            ("info", "a firewall rule does drop for TCP port(s) 5432"),
            (
                "info",
                "the input chain drops what no rule accepts (policy drop): the port needs an "
                "accept rule",
            ),
        ],
    ),
    Case(
        "port-not-listening",
        "timeouts and a full queue",
        {
            "Listener on the port": Out(
                "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
                'LISTEN 4097   4096         0.0.0.0:80        0.0.0.0:*    users:(("nginx",'
                "pid=812,fd=6))\n"
            ),
            "Try to connect": Out(
                "",
                1,
                "nc: connect to 10.0.0.12 port 80 (tcp) timed out: Operation now in progress\n",
            ),
        },
        [
            (
                "warning",
                "the accept queue of 0.0.0.0:80 is full (4097 of 4096): the service does not "
                "keep up",
            ),
            (
                "warning",
                "connecting to 10.0.0.12 port 80 timed out: a firewall may drop the traffic",
            ),
        ],
    ),
    Case(
        "port-not-listening",
        "healthy",
        {
            "Listener on the port": Out(
                "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
                'LISTEN 0      244          0.0.0.0:5432      0.0.0.0:*    users:(("postgres",'
                "pid=812,fd=6))\n"
            ),
            "Try to connect": Out(
                "", 0, "Connection to 127.0.0.1 5432 port [tcp/postgresql] succeeded!\n"
            ),
            "Service status": Out(NGINX_OK),
            "Service log": Out(
                "Mar 14 09:12:44 db-1 postgresql@15-main[812]: LOG:  database system is ready "
                "to accept connections\n"
            ),
            "Firewall rules": Out(NFT_OK),
        },
        [],
    ),
    Case(
        "service-down",
        "broken configuration",
        {
            "Service status": Out(NGINX_FAILED, 3),
            "Enabled at boot": Out("enabled\n"),
            "Recent service log": Out(
                "Mar 14 10:01:02 web-1 nginx[2345]: 2024/03/14 10:01:02 [emerg] 2345#2345: "
                'unknown directive "proxy_passs" in /etc/nginx/sites-enabled/default:12\n'
                "Mar 14 10:01:02 web-1 nginx[2345]: nginx: configuration file "
                "/etc/nginx/nginx.conf test failed\n"
                "Mar 14 10:01:02 web-1 systemd[1]: nginx.service: Control process exited, "
                "code=exited, status=1/FAILURE\n"
            ),
            "Restart history": Out(
                "ActiveState=failed\nSubState=failed\nResult=exit-code\nNRestarts=0\n"
                "ExecMainStatus=0\n"
            ),
        },
        [
            ("critical", "the service failed (Result: exit-code)"),
            (
                "critical",
                'configuration error: unknown directive "proxy_passs" in '
                "/etc/nginx/sites-enabled/default:12",
            ),
            ("warning", "its main process exited with status 1/FAILURE"),
            ("warning", "systemd records Result=exit-code"),
        ],
    ),
    Case(
        "service-down",
        "stopped and disabled",
        {
            "Service status": Out(NGINX_STOPPED, 3),
            "Enabled at boot": Out("disabled\n", 1),
            "Recent service log": Out(
                "Mar 14 10:01:02 web-1 systemd[1]: nginx.service: A process of this unit has "
                "been killed by the OOM killer.\n"
                "Mar 14 10:01:03 web-1 systemd[1]: nginx.service: Start request repeated too "
                "quickly.\n"
            ),
            "Restart history": Out("ActiveState=inactive\nResult=oom-kill\nNRestarts=7\n"),
        },
        [
            ("critical", "the service is stopped (inactive)"),
            ("critical", "the kernel's OOM killer killed a process of the service"),
            ("warning", "the service is disabled: it does not start at boot"),
            (
                "warning",
                "systemd gave up restarting the service (start request repeated too quickly)",
            ),
            ("warning", "systemd restarted the service 7 times: it keeps crashing"),
            ("warning", "systemd records Result=oom-kill"),
        ],
    ),
    Case(
        "service-down",
        "masked, missing",
        {
            "Service status": Out("", 4, "Unit nginx.service could not be found.\n"),
            "Enabled at boot": Out("masked\n", 1),
        },
        [
            ("critical", "nginx.service does not exist on this host"),
            ("critical", "the service is masked: it cannot start until it is unmasked"),
        ],
    ),
    Case(
        "service-down",
        "healthy",
        {
            "Service status": Out(NGINX_OK),
            "Enabled at boot": Out("enabled\n"),
            "Recent service log": Out(
                "Mar 14 09:12:44 web-1 systemd[1]: Starting nginx.service...\n"
                "Mar 14 09:12:44 web-1 systemd[1]: Started nginx.service.\n"
            ),
            "Restart history": Out(
                "ActiveState=active\nSubState=running\nResult=success\nNRestarts=0\n"
                "ExecMainStatus=0\n"
            ),
        },
        [],
    ),
    Case(
        "time-drift",
        "not synchronised",
        {
            "Clock and synchronisation state": Out(TIMEDATECTL),
            "Time daemons": Out(
                "\u00d7 chrony.service - chrony, an NTP client/server\n"
                "     Loaded: loaded (/lib/systemd/system/chrony.service; enabled)\n"
                "     Active: failed (Result: exit-code) since Thu 2024-03-14 09:01:02 UTC\n",
                3,
                "Unit chronyd.service could not be found.\nUnit ntp.service could not be found.\n",
            ),
            "Time daemon log": Out(
                "Mar 14 09:01:02 web-1 chronyd[612]: System clock wrong by 42.123456 seconds\n"
                "Mar 14 09:01:02 web-1 chronyd[612]: Can't synchronise: no selectable sources\n"
                "Mar 14 09:05:00 web-1 systemd-timesyncd[512]: Timed out waiting for reply from "
                "185.125.190.56:123 (ntp.ubuntu.com).\n"
            ),
            "systemd-timesyncd server and offset": Out(
                TIMESYNC.format(offset="-2.504s", packets="0")
            ),
        },
        [
            ("critical", "the system clock is not synchronised"),
            ("critical", "no time synchronisation service is active (NTP service: inactive)"),
            ("critical", "chrony has no usable time source"),
            ("critical", "systemd-timesyncd measures the clock off by -2.504s"),
            ("warning", "a time synchronisation service has failed (Result: exit-code)"),
            ("warning", "chrony found the clock off by 42.123456 s"),
            ("warning", "systemd-timesyncd gets no reply from 185.125.190.56:123"),
            ("warning", "systemd-timesyncd has received no answer from its server yet"),
            (
                "info",
                "the hardware clock keeps local time, which goes wrong around DST changes",
            ),
        ],
    ),
    Case(
        "time-drift",
        "milliseconds off",
        {
            "Clock and synchronisation state": Out(
                TIMEDATECTL_OK.replace("NTP service: active", "NTP service: n/a")
            ),
            "systemd-timesyncd server and offset": Out(
                TIMESYNC.format(offset="-312.118ms", packets="12")
            ),
        },
        [
            ("warning", "no time synchronisation service is installed (NTP service: n/a)"),
            ("warning", "systemd-timesyncd measures the clock off by -312.118 ms"),
        ],
    ),
    Case(
        "time-drift",
        "healthy",
        {
            "Clock and synchronisation state": Out(TIMEDATECTL_OK),
            "Time daemons": Out(
                "\u25cf systemd-timesyncd.service - Network Time Synchronization\n"
                "     Active: active (running) since Thu 2024-03-14 09:01:02 UTC; 1h ago\n",
                3,
                "Unit chronyd.service could not be found.\n",
            ),
            "Time daemon log": Out(
                "Mar 14 09:01:05 web-1 systemd-timesyncd[512]: Initial clock synchronization "
                "to Thu 2024-03-14 09:01:05.123456 UTC.\n"
            ),
            "systemd-timesyncd server and offset": Out(
                TIMESYNC.format(offset="-127us", packets="263")
            ),
            "Current UTC time": Out("Thu Mar 14 10:15:01 UTC 2024\n"),
        },
        [],
    ),
    Case(
        "zombies",
        "piling up",
        {
            "Zombie processes and their parents": Out(
                "    PID    PPID STAT     ELAPSED COMMAND\n"
                "  23001   22950 Z          01:12 php-fpm8.2 <defunct>\n"
                "  23002   22950 Z          01:10 php-fpm8.2 <defunct>\n"
                "  30111       1 Z          00:05 sh <defunct>\n"
            ),
            "Zombie count": Out("1543\n"),
            "The parent process": Out(
                "    PID    PPID STAT     ELAPSED CMD\n"
                "  22950     812 Tl    3-02:11:05 php-fpm: pool www\n"
            ),
        },
        [
            ("critical", "1543 zombie processes fill the process table"),
            ("warning", "zombie sh processes are children of PID 1, which does not reap them"),
            ("warning", "the parent is stopped (state T), so it cannot reap its children"),
            ("info", "zombie php-fpm8.2 processes wait for their parent 22950 to reap them"),
        ],
    ),
    Case(
        "zombies",
        "healthy",
        {
            "Zombie processes and their parents": Out("    PID    PPID STAT     ELAPSED COMMAND\n"),
            "Zombie count": Out("0\n", 1),
            "The parent process": Out(
                "    PID    PPID STAT     ELAPSED CMD\n"
                "  22950     812 Ss    3-02:11:05 php-fpm: master process\n"
            ),
        },
        [],
    ),
    Case(
        "cert-expiry",
        "file on disk",
        {
            "Certificate file on disk": Out(
                "subject=CN = www.example.com\nnotAfter=Jun 12 08:12:00 2024 GMT\n"
            )
        },
        [("info", "the certificate file on disk is valid until Jun 12 08:12:00 2024 GMT")],
    ),
    Case(
        "high-load",
        "I/O bound",
        {
            "CPU count": Out("8\n"),
            "Run queue, I/O wait and steal": Out(
                VMSTAT_HEAD
                + " 2  9      0 412344  81236 6123400    0    0  1204 98012 2210 4120"
                + "  3  4 53 40  0\n"
            ),
        },
        [
            (
                "info",
                "part of the load is I/O wait (vmstat wa above 20%): see the disk-io-latency "
                "runbook",
            )
        ],
    ),
    Case(
        "log-growth",
        "journal in terabytes, logrotate error",
        {
            "Journal size": Out("Archived and active journals take up 1.1T in the file system.\n"),
            "Rotation dry run": Out(
                "",
                1,
                'error: skipping "/var/log/app/app.log" because parent directory has insecure '
                'permissions (It\'s world writable or writable by group which is not "root") '
                'Set "su" directive in config file to tell logrotate which user/group should be '
                "used for rotation.\n",
            ),
        },
        [
            ("critical", "the systemd journal takes 1.1T"),
            (
                "warning",
                'logrotate reports an error: skipping "/var/log/app/app.log" because parent '
                "directory has insecure permissions (It's world writable or writable by g…",
            ),
        ],
    ),
    Case(
        "port-not-listening",
        "other netcats, bind errors",
        {
            "Try to connect": Out(
                "",
                1,
                "(UNKNOWN) [10.0.0.12] 5432 (postgresql) : Connection refused\n"
                "Ncat: Connection refused.\n",
            ),
            "Service status": Out("", 4, "Unit postgresql.service could not be found.\n"),
            "Service log": Out(
                "Mar 14 10:01:02 web-1 nginx[2345]: nginx: [emerg] bind() to 0.0.0.0:80 failed "
                "(13: Permission denied)\n"
                "Mar 14 10:01:02 db-1 postgres[2345]: LOG:  could not bind IPv4 address "
                '"10.0.0.99": Cannot assign requested address\n'
            ),
        },
        [
            (
                "critical",
                "nothing accepts connections on 10.0.0.12 port 5432 (connection refused)",
            ),
            ("critical", "nothing accepts connections on the port (connection refused)"),
            ("critical", "postgresql.service does not exist on this host"),
            (
                "warning",
                "the service is configured to listen on an address this host does not have",
            ),
            ("warning", "the service may not bind 0.0.0.0:80 (permission denied)"),
        ],
    ),
    Case(
        "service-down",
        "crash loop",
        {
            "Service status": Out(
                "\u25cf app.service - App\n"
                "     Active: activating (auto-restart) (Result: exit-code) since Thu "
                "2024-03-14 10:01:02 UTC; 2s ago\n"
            ),
            "Recent service log": Out(
                "Mar 14 10:01:01 web-1 app[2345]: listen tcp :8080: bind: address already in "
                "use\n"
                "Mar 14 10:01:01 web-1 app[2345]: Error: Address already in use (os error 98)\n"
                "Mar 14 10:01:01 web-1 app[2345]: open /etc/app/key.pem: permission denied\n"
            ),
        },
        [
            ("critical", "the service crashes and systemd keeps restarting it"),
            ("critical", "the port the service needs is held by another process"),
            ("warning", "the log shows a permission error"),
        ],
    ),
    Case(
        "time-drift",
        "ahead by milliseconds",
        {
            "systemd-timesyncd server and offset": Out(
                TIMESYNC.format(offset="250.5ms", packets="40")
            ),
        },
        [("warning", "systemd-timesyncd measures the clock off by 250.5 ms")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.runbook}: {case.name}")
def test_findings_on_real_output(case: Case) -> None:
    runbook = RUNBOOKS[case.runbook]
    assert set(case.outputs) <= {step.name for step in runbook.diagnostics}
    found = _run(runbook, case.outputs)
    assert [(f.severity, f.message) for f in found] == case.expected
    for finding in found:
        assert finding.host == "web-1"
        assert finding.evidence


@pytest.mark.parametrize("runbook", list(RUNBOOKS.values()), ids=lambda runbook: runbook.id)
def test_every_runbook_has_checks_and_samples_both_ways(runbook: Runbook) -> None:
    assert any(step.findings for step in runbook.diagnostics)
    cases = [case for case in CASES if case.runbook == runbook.id]
    assert any(case.expected for case in cases), "no sample that finds something"
    assert any(not case.expected for case in cases), "no healthy sample"


def test_every_check_fires_in_some_sample() -> None:
    """No check is dead: each one produced a finding in at least one sample above."""
    fired: set[tuple[str, str, int]] = set()
    for case in CASES:
        runbook = RUNBOOKS[case.runbook]
        for name, out in case.outputs.items():
            step = next(s for s in runbook.diagnostics if s.name == name)
            for i, check in enumerate(step.findings):
                single = Runbook.model_validate(
                    runbook.model_dump()
                    | {
                        "diagnostics": [
                            s.model_dump() | {"findings": [check.model_dump()] if s is step else []}
                            for s in runbook.diagnostics
                        ]
                    }
                )
                if _run(single, case.outputs | {name: out}):
                    fired.add((runbook.id, name, i))
    missing = [
        (runbook.id, step.name, i)
        for runbook in RUNBOOKS.values()
        for step in runbook.diagnostics
        for i in range(len(step.findings))
        if (runbook.id, step.name, i) not in fired
    ]
    assert missing == []


def test_render_params_fill_parameters_from_findings() -> None:
    cases = {case.name: case for case in CASES}
    failed = _run(RUNBOOKS["failed-unit"], cases["failed backup"].outputs)
    assert render_params(RUNBOOKS["failed-unit"], failed) == {"unit": "backup.service"}
    oom = _run(RUNBOOKS["memory-pressure"], cases["out of memory"].outputs)
    assert render_params(RUNBOOKS["memory-pressure"], oom) == {"service": "java-app"}
    io = _run(RUNBOOKS["disk-io-latency"], cases["saturated"].outputs)
    # the flooding process (its finding points to a remediation) wins over the hung one
    assert render_params(RUNBOOKS["disk-io-latency"], io) == {"pid": "4321", "device": "sda"}
    zombies = _run(RUNBOOKS["zombies"], cases["piling up"].outputs)
    assert render_params(RUNBOOKS["zombies"], zombies) == {"ppid": "22950"}
    inodes = _run(RUNBOOKS["inode-exhaustion"], cases["no inodes"].outputs)
    assert render_params(RUNBOOKS["inode-exhaustion"], inodes) == {"path": "/"}


def test_render_params_skip_values_that_are_not_plain_words() -> None:
    runbook = RUNBOOKS["failed-unit"]
    output = (
        "\u25cf systemd-fsck@dev-disk-by\\x2duuid-1234.service loaded failed failed Odd\n"
        "\u25cf good.service loaded failed failed Ok\n"
    )
    found = _run(runbook, {"Failed units": Out(output)})
    assert len(found) == 2
    assert render_params(runbook, found) == {"unit": "good.service"}
    bad = [
        Finding("h", "s", "critical", "m", "x", "", (("unit", value),))
        for value in ("-evil.service", "a b", "$(reboot)", "x" * 257, "")
    ]
    assert render_params(runbook, bad) == {}


def test_render_params_prefer_findings_that_point_to_a_remediation() -> None:
    runbook = RUNBOOKS["high-load"]
    plain = Finding("a", "x", "critical", "m", None, "", (("pid", "1"),))
    pointed = Finding("a", "x", "info", "n", "Lower the process priority", "", (("pid", "2"),))
    other = Finding("a", "x", "info", "o", None, "", (("nothing", "3"), ("service", "nginx")))
    assert render_params(runbook, [plain, pointed, other]) == {"pid": "2", "service": "nginx"}


def test_choose_remediations_in_runbook_order_once_each() -> None:
    runbook = RUNBOOKS["disk-full"]
    found = _run(runbook, CASES[0].outputs)
    chosen = [step.name for step in choose_remediations(runbook, found)]
    assert chosen == [
        "Vacuum the systemd journal",
        "Clean the package manager cache",
        "Delete old compressed logs",
        "Restart the service holding deleted files",
    ]
    assert choose_remediations(runbook, []) == []


# --- findings mechanics -----------------------------------------------------------------


def _mini(*checks: dict[str, Any], steps: int = 1) -> Runbook:
    diagnostics: list[dict[str, Any]] = [
        {"name": f"Step {i}", "command": f"cmd{i}", "explain": "x"} for i in range(steps)
    ]
    diagnostics[0]["findings"] = list(checks)
    return Runbook.model_validate(
        {
            "id": "mini",
            "title": "Mini",
            "summary": "Mini.",
            "symptoms": ["something"],
            "parameters": {"service": {"description": "s", "example": "nginx"}},
            "diagnostics": diagnostics,
            "remediations": [
                {
                    "name": "Restart",
                    "command": "systemctl restart {service}",
                    "risk_note": "r",
                    "when": "w",
                }
            ],
            "verify": [{"name": "Check", "command": "true", "explain": "x"}],
        }
    )


def test_findings_order_and_dedupe_across_hosts() -> None:
    runbook = _mini(
        {"pattern": r"^warn (?P<x>\w+)", "message": "w {x}"},
        {"pattern": r"^crit (?P<x>\w+)", "message": "c {x}", "severity": "critical"},
        {"pattern": r"^info", "message": "i", "severity": "info"},
    )
    text = "warn a\ninfo\nwarn a\ncrit b\nwarn c\n"
    results = [
        HostResult(host, (StepResult("Step 0", "cmd0", 0, text, ""),)) for host in ("h2", "h1")
    ]
    found = findings(runbook, results)
    assert [(f.host, f.severity, f.message) for f in found] == [
        ("h1", "critical", "c b"),
        ("h2", "critical", "c b"),
        ("h1", "warning", "w a"),
        ("h1", "warning", "w c"),
        ("h2", "warning", "w a"),
        ("h2", "warning", "w c"),
        ("h1", "info", "i"),
        ("h2", "info", "i"),
    ]


def test_unreachable_and_unknown_steps_find_nothing() -> None:
    runbook = _mini({"exit_nonzero": "exit {exit_status}"}, {"pattern": "x", "message": "x"})
    steps = (
        StepResult("Step 0", "cmd0", None, "x", "", "host unreachable"),
        StepResult("Other", "other", 1, "x", ""),
    )
    assert findings(runbook, [HostResult("h", steps)]) == []


def test_exit_checks_fire_only_on_a_nonzero_status() -> None:
    runbook = _mini({"exit_nonzero": "exited {exit_status}", "severity": "critical"})

    def run(status: int | None) -> list[str]:
        result = StepResult("Step 0", "cmd0", status, "", "")
        return [f.message for f in findings(runbook, [HostResult("h", (result,))])]

    assert run(0) == []
    assert run(None) == []
    assert run(3) == ["exited 3"]
    assert run(-9) == ["exited -9"]


def test_output_is_cleaned_before_matching_and_values_are_capped() -> None:
    runbook = _mini({"pattern": r"^unit (?P<name>.+)$", "message": "unit {name}"})
    text = "\x1b[1;31munit\x1b[0m \u202eevil\x07 " + "x" * 500 + "\n"
    result = StepResult("Step 0", "cmd0", 0, text, "")
    (finding,) = findings(runbook, [HostResult("h", (result,))])
    assert "\x1b" not in finding.message
    assert "\u202e" not in finding.message
    assert "\x07" not in finding.evidence
    assert finding.message.startswith("unit evil x")
    assert len(dict(finding.values)["name"]) <= 120


def test_thresholds_percentages_and_limits() -> None:
    runbook = _mini(
        {
            "pattern": r"^(?P<a>\S+) of (?P<b>\S+)$",
            "message": "{a}/{b} over {limit}%",
            "group": "a",
            "percent_of": "b",
            "above": 50,
        },
        {
            "pattern": r"^n=(?P<n>\S+)$",
            "message": "n {n} above step {limit}",
            "group": "n",
            "above_step": "Step 1",
        },
        steps=2,
    )

    def run(text: str, limit_output: str | None = "4\n") -> list[str]:
        steps = [StepResult("Step 0", "cmd0", 0, text, "")]
        if limit_output is not None:
            steps.append(StepResult("Step 1", "cmd1", 0, limit_output, ""))
        return [f.message for f in findings(runbook, [HostResult("h", tuple(steps))])]

    assert run("6 of 10\n") == ["6/10 over 50%"]
    assert run("5 of 10\n4 of 0\nx of 10\nnan of 10\ninf of 1\n") == []
    assert run("n=4.5\nn=4\n") == ["n 4.5 above step 4"]
    assert run("n=9\n", None) == []
    assert run("n=9\n", "no number here\n") == []


# --- the runbook model ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ({"pattern": "(", "message": "x"}, "not a regular expression"),
        ({"pattern": "(a+)+$", "message": "x"}, "exponential"),
        ({"pattern": r"(\s*-\S+)*x", "message": "x"}, "exponential"),
        ({"pattern": "a" * 301, "message": "x"}, "at most 300"),
        ({"pattern": "(?P<a>x)", "message": "{b}"}, "not among the pattern's named groups"),
        ({"pattern": "(?P<a>x)", "message": "{limit}"}, "not among"),
        ({"pattern": "(?P<a>x)", "message": "{a:>5}"}, "fields are written {name}"),
        ({"pattern": "(?P<a>x)", "message": "{a.real}"}, "fields are written {name}"),
        ({"pattern": "(?P<a>x)", "message": "{}"}, "fields are written {name}"),
        ({"pattern": "(?P<a>x)", "message": "{a"}, "message '{a'"),
        ({"pattern": "x"}, "needs a `message`"),
        ({"message": "x"}, "either `pattern`"),
        ({"pattern": "x", "message": "x", "exit_nonzero": "y"}, "either `pattern`"),
        ({"pattern": "(?P<a>x)", "message": "x", "above": 1}, "need a `group`"),
        ({"pattern": "(?P<a>x)", "message": "x", "group": "a"}, "give one of"),
        ({"pattern": "(?P<a>x)", "message": "x", "group": "a", "above": 1, "below": 0}, "one of"),
        ({"pattern": "(?P<a>x)", "message": "x", "group": "b", "above": 1}, "no group named 'b'"),
        ({"pattern": "(?P<limit>x)", "message": "x"}, "reserved"),
        (
            {"pattern": "(?P<a>x)", "message": "x", "group": "a", "above": 1, "percent_of": "c"},
            "no group named 'c'",
        ),
        ({"exit_nonzero": "status {status}"}, "only {exit_status}"),
        ({"exit_nonzero": "x", "group": "a"}, "no message, group or limit"),
        ({"pattern": "x", "message": "x", "severity": "fatal"}, "Input should be"),
        ({"pattern": "x", "message": "x", "remediation": "Reboot"}, "no remediation 'Reboot'"),
        (
            {"pattern": "(?P<a>x)", "message": "x", "group": "a", "above_step": "Nope"},
            "not a diagnostics step",
        ),
        (
            {"pattern": "(?P<a>x)", "message": "x", "group": "a", "above": float("nan")},
            "finite number",
        ),
    ],
)
def test_malformed_checks_are_rejected(check: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        _mini(check)


def test_checks_only_on_diagnostics() -> None:
    data = _mini().model_dump()
    check = {"pattern": "x", "message": "x"}
    for kind in ("remediations", "verify"):
        broken = data | {kind: [data[kind][0] | {"findings": [check]}]}
        with pytest.raises(ValueError, match="only diagnostics have findings"):
            Runbook.model_validate(broken)


def test_a_valid_check_keeps_its_pattern_verbatim() -> None:
    runbook = _mini(
        {"pattern": " x ", "message": "{{literal}}", "group": None},
        {"pattern": r"(?P<a>\d+)", "message": "{a} > {limit}", "group": "a", "below": 3},
        {"exit_nonzero": "failed with {exit_status}", "remediation": "Restart"},
    )
    checks = runbook.diagnostics[0].findings
    assert checks[0].pattern == " x "
    result = StepResult("Step 0", "cmd0", 2, "a x b\n2\n", "")
    messages = [f.message for f in findings(runbook, [HostResult("h", (result,))])]
    assert messages == ["{literal}", "2 > 3", "failed with 2"]


# --- answers ----------------------------------------------------------------------------

TASK = "0191e2c4-aaaa-7bbb-8ccc-123456789abc"


def _prose(markdown: str) -> str:
    """``markdown`` without fenced blocks and inline code: the text a reader sees as prose."""
    without_fences = re.sub(r"(?ms)^\s*(`{3,})[^\n]*\n.*?^\s*\1\s*$", "", markdown)
    return re.sub(r"(`+).*?\1", "", without_fences)


def _disk_answer(**changes: Any) -> str:
    runbook = RUNBOOKS["disk-full"]
    outputs = dict(CASES[0].outputs)
    steps = [
        StepResult(name, f"cmd {name}", out.exit_status, out.stdout, out.stderr)
        for name, out in outputs.items()
    ]
    steps[2] = StepResult(
        "Largest files", "find / -xdev", 0, "\x1b[31mred\x1b[0m ```` fence\x07\n" * 30, ""
    )
    results = [
        HostResult("web-1", tuple(steps)),
        HostResult(
            "web-2", (StepResult("Usage per filesystem", "df -hT", None, "", "", "timeout"),)
        ),
        HostResult(
            "db-1",
            (
                StepResult("Usage per filesystem", "df -hT", 0, DF_OK, ""),
                StepResult("Journal size", "journalctl --disk-usage", 1, "", "No journal files\n"),
            ),
        ),
    ]
    targets = Targets("web-1,web-2,db-1", ("web-1", "web-2", "db-1"), "named in the request")
    found = findings(runbook, results)
    arguments: dict[str, Any] = {
        "request": "disk is full on web-1, web-2 and db-1",
        "runbook": runbook,
        "targets": targets,
        "results": results,
        "findings": found,
        "other_matches": [RUNBOOKS["inode-exhaustion"], RUNBOOKS["log-growth"]],
        "requested": {"Vacuum the systemd journal": TASK},
    }
    arguments.update(changes)
    return summarize(**arguments)


def test_summary_starts_with_the_no_model_notice() -> None:
    answer = _disk_answer()
    assert answer.startswith("**No language model is configured**")
    head = answer.split("## Runbook")[0]
    for needle in (
        "IT0_AGENT_MODEL",
        "anthropic:claude-sonnet-4-6",
        "ANTHROPIC_API_KEY",
        "openai:<model>",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "Ollama",
        "vLLM",
        "claude-sdk:<model>",
    ):
        assert needle in head
    assert NO_MODEL_NOTICE in answer


def test_summary_sections_in_order() -> None:
    answer = _disk_answer()
    sections = [
        "## Runbook: Disk full (filesystem out of space)",
        "**Hosts:**",
        "### Findings",
        "**Critical** (1)",
        "**Warning** (4)",
        "**Info** (1)",
        "### Other output",
        "### Proposed remediations",
        "### Verify afterwards",
        "**Other runbooks that may fit:**",
    ]
    positions = [answer.index(section) for section in sections]
    assert positions == sorted(positions)
    assert "closest symptom: `disk is full`" in answer
    assert "- Inode exhaustion (no free inodes) (`inode-exhaustion`)" in answer
    assert "df -h /\n" in answer  # the verify step, filled in from the finding


def test_summary_marks_requested_and_suggested_remediations() -> None:
    answer = _disk_answer()
    remediations = answer.split("### Proposed remediations")[1].split("### Verify")[0]
    first, *rest = re.split(r"\n(?=\d+\. )", remediations.strip())
    assert first.startswith("1. **Vacuum the systemd journal**, because the systemd journal")
    assert f"**Requested for approval** as task `{TASK}`" in first
    assert "`it0 approvals list`" in first
    assert "`it0 approvals approve <approval-id>`" in first
    assert f"it0 tasks logs {TASK} --follow" in first
    assert all("**Suggested only**" in item for item in rest)
    # a suggestion names the hosts whose findings support it
    assert "# to request it: it0 tasks run web-1 'apt-get clean || dnf clean all'" in remediations
    # the service cannot be taken from the output: the command says what to fill in
    assert "systemctl restart {service}" in remediations
    assert "Fill in `service` (e.g. nginx)" in remediations


def test_summary_without_requests_suggests_everything() -> None:
    answer = _disk_answer(requested=None)
    assert "Requested for approval" not in answer
    assert answer.count("**Suggested only**") == 4


def test_summary_marks_unreachable_and_failed_steps() -> None:
    answer = _disk_answer()
    output = answer.split("### Other output")[1].split("### Proposed")[0]
    assert "- `web-2`: **no step ran**: timeout" in output
    assert "**Journal size** `journalctl --disk-usage`: **failed** (exit status 1)" in output
    assert "No journal files" in output
    # db-1's healthy df output is digested; web-1's df had findings and is not repeated
    assert "**Usage per filesystem** `df -hT`: exit status 0" in output
    assert output.count("Usage per filesystem") == 1


def test_summary_output_is_fenced_cleaned_and_capped() -> None:
    answer = _disk_answer()
    assert "\x1b" not in answer
    assert "\x07" not in answer
    output = answer.split("### Other output")[1].split("### Proposed")[0]
    # four backticks in the output: the fence is longer, so the output cannot close it
    assert "    `````text\n" in output
    assert output.count("red ```` fence") == 8
    assert "(22 more lines)" in output
    assert "red" not in _prose(output)


def test_values_from_the_output_are_escaped_in_prose() -> None:
    runbook = RUNBOOKS["log-growth"]
    evil = "error: [click here](http://evil.example) **now** <script>\n"
    results = [HostResult("web-1", (StepResult("Rotation dry run", "logrotate -d", 0, "", evil),))]
    found = findings(runbook, results)
    assert found[0].message.startswith("logrotate reports an error: [click here]")
    targets = Targets("web-1", ("web-1",), "named in the request: web-1")
    answer = summarize("logs fill the disk", runbook, targets, results, found, [])
    prose = _prose(answer)
    assert "[click here](" not in prose
    assert "<script>" not in prose
    assert "\\[click here\\]" in prose
    assert "Other runbooks" not in answer


def test_summary_without_findings_says_so() -> None:
    runbook = RUNBOOKS["zombies"]
    outputs = next(c for c in CASES if c.runbook == "zombies" and not c.expected).outputs
    results = [
        HostResult(
            "web-1",
            tuple(StepResult(n, n, o.exit_status, o.stdout, o.stderr) for n, o in outputs.items()),
        )
    ]
    targets = Targets("web-1", ("web-1",), "named")
    answer = summarize("zombies on web-1", runbook, targets, results, [], [])
    assert "The runbook's checks found nothing wrong" in answer
    assert "No finding points to a remediation" in answer
    assert "kill -s CHLD {ppid}" in answer


def test_summary_lists_hosts_without_results() -> None:
    targets = Targets("web-1,web-9", ("web-1", "web-9"), "named")
    answer = summarize("disk full", RUNBOOKS["disk-full"], targets, [], [], [])
    assert "no results from `web-1`, `web-9`" in answer
    # no finding supports a remediation: it would run on the hosts of the request
    assert "it0 tasks run web-1,web-9 'apt-get clean || dnf clean all'" in answer


def test_no_match_answer() -> None:
    suggestions = [RUNBOOKS["disk-full"], RUNBOOKS["service-down"]]
    answer = no_match_answer("what is the meaning of life", 0, suggestions)
    assert answer.startswith(NO_MODEL_NOTICE)
    assert "## No runbook matches this request" in answer
    assert "`disk is full on web-1`" in answer
    assert "- Disk full (filesystem out of space) (`disk-full`)" in answer
    assert "`it0 servers add`" in answer
    other = no_match_answer("hm", 12, [])
    assert "The inventory has 12 hosts" in other
    assert "`nginx is down on the web servers`" in other


def test_no_target_answer() -> None:
    runbook = RUNBOOKS["disk-full"]
    answer = no_target_answer("disk is full", FLEET, runbook)
    assert answer.startswith(NO_MODEL_NOTICE)
    assert "## Runbook: Disk full" in answer
    assert "does not say which hosts" in answer
    for example in (
        "`disk is full on web-1`",
        "`disk is full on the web hosts`",
        "`disk is full on role=web`",
        "`disk is full in prod`",
        "`disk is full on all servers`",
    ):
        assert example in answer
    assert "**Usage per filesystem**" in answer
    for example in ("on the web hosts", "on role=web", "in prod", "on all servers"):
        assert extract_targets(f"disk is full {example}", FLEET).names
    unmatched = extract_targets("the db hosts in staging", FLEET)
    assert "`env=staging,role=db`" not in no_target_answer("x", FLEET, runbook, unmatched)
    assert "`role=db,env=staging`, which matches no host" in no_target_answer(
        "x", FLEET, runbook, unmatched
    )
    empty = no_target_answer("disk is full", [], runbook)
    assert "`it0 servers add`" in empty


def test_clean_keeps_text_tabs_and_newlines() -> None:
    assert clean("a\tb\nc\x1b[0m\x1b]0;title\x07d\x00\x9b") == "a\tb\ncd"


def test_verify_answer_digests_each_host() -> None:
    runbook = RUNBOOKS["service-down"]
    results = [
        HostResult(
            "web-1",
            (
                StepResult("Service is active", "systemctl is-active nginx", 0, "active\n", ""),
                StepResult("No new errors", "journalctl ...", 0, "-- No entries --\n", ""),
            ),
        ),
        HostResult(
            "web-2",
            (StepResult("Service is active", "systemctl is-active nginx", 3, "failed\n", ""),),
        ),
        HostResult("web-3", (StepResult("Service is active", "x", None, "", "", "timeout"),)),
    ]
    answer = verify_answer(runbook, results)
    assert answer.startswith("### Verify: Service down")
    assert NO_MODEL_NOTICE not in answer
    assert '- **Service is active**: Prints "active"' in answer
    assert "**Service is active** `systemctl is-active nginx`: exit status 0" in answer
    assert "**failed** (exit status 3)" in answer
    assert "- `web-3`: **no step ran**: timeout" in answer
    assert "```text\n    active\n    ```" in answer


ADVERSARIAL = [
    " " * 1000,
    "-" * 1000,
    "[" * 1000,
    "(" * 1000,
    "\t" * 1000,
    "\u25cf " * 500,
    "a." * 500,
    "1 " * 500,
    "1." * 500,
    "sda" + " 1" * 498,
    "Average:" + " 1" * 496,
    "load average: " + "1," * 493,
    "LISTEN" + " 1" * 497,
    "code=exited, status=" + "(" * 980,
    "Killed process 1 (" + "a" * 982,
]


@pytest.mark.parametrize("runbook", list(RUNBOOKS.values()), ids=lambda runbook: runbook.id)
def test_builtin_patterns_stay_fast_on_hostile_lines(runbook: Runbook) -> None:
    """Output comes from the servers: no pattern may backtrack for long on a crafted line."""
    for step in runbook.diagnostics:
        for check in step.findings:
            if check.pattern is None:
                continue
            regex = re.compile(check.pattern)
            started = time.perf_counter()
            for line in ADVERSARIAL:
                regex.search(line)
            assert time.perf_counter() - started < 0.1, check.pattern


def test_checks_look_at_a_bounded_amount_of_output() -> None:
    runbook = _mini({"pattern": "needle", "message": "found"})

    def run(text: str) -> int:
        result = StepResult("Step 0", "cmd0", 0, text, "")
        return len(findings(runbook, [HostResult("h", (result,))]))

    assert run("hay\n" * 1000 + "needle\n") == 1
    assert run("hay\n" * 6000 + "needle\n") == 0  # after MAX_LINES
    assert run(("h" * 999 + "\n") * 300 + "needle\n") == 0  # after MAX_CHARS
    assert run("x" * 5000 + "needle\n") == 0  # a long line is cut, not wrapped
