//! The egress policy: what a DeCloud container may reach from the volunteer's machine.
//!
//! A container reaches the public internet and the resolvers it is given, nothing else: not
//! the host (any of its addresses), not the volunteer's networks (the private, CGNAT,
//! link-local and loopback ranges of [`super::cidr`]), not multicast, not another pod on the
//! same edge. The edge installs this as iptables rules (the `iptables` and `ip6tables`
//! commands, either backend) in two chains of its own per address family, named after the
//! edge (`DECLOUD-<hash of the node name>-FWD` and `-IN`), so several edges on one machine
//! never touch each other's rules:
//!
//! - traffic a container sends to other hosts is forwarded by the kernel: Docker's
//!   `DOCKER-USER` chain (the hook Docker keeps first in `FORWARD`; plain `FORWARD` where
//!   Docker manages no chains, as for IPv6 on most engines) jumps to `-FWD` for packets coming
//!   in on the edge's bridge;
//! - traffic a container sends to the host itself (its bridge gateway or any other address of
//!   the host) is delivered locally: `INPUT` jumps to `-IN` for packets from the bridge.
//!
//! Replies of connections the host opened (the edge dials into containers for the gateway's
//! tunnels and for probes: host → container leaves through `OUTPUT`, which is not touched)
//! pass as `ESTABLISHED`. Pods cannot reach each other: bridged traffic (in and out of the
//! same bridge) is dropped; this needs `br_netfilter` (`net.bridge.bridge-nf-call-iptables=1`),
//! which the install checks and turns on. Containers of one pod share a network namespace, so
//! their `localhost` never crosses the bridge.
//!
//! DNS: on a user-defined network a container asks Docker's embedded resolver (127.0.0.11
//! inside its own namespace); the engine forwards the query to the host's nameservers, from
//! the host's namespace on recent engines and from the container's on older ones (20.10).
//! Port 53 of the nameservers in the host's `/etc/resolv.conf` is therefore allowed even
//! where they sit in a denied range, so resolution works on both.
//!
//! The chains are written with `iptables-restore --noflush` (one atomic transaction per
//! family), then every rule and every jump is checked with `iptables -C` and the hooks are
//! checked to have no `ACCEPT` ahead of the jump. `edge-kubelet uninstall` removes jumps and
//! chains.

use std::fmt::Write as _;
use std::process::Command;

use super::cidr::Cidr;
use crate::error::{Error, Result};

/// What the flags ask for: `--allow-egress` and `--deny-egress`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges opened although denied by default (e.g. a LAN service the volunteer lends).
    pub allow: Vec<Cidr>,
    /// Ranges closed in addition; they win over `allow`.
    pub deny: Vec<Cidr>,
}

/// Most `--allow-egress` plus `--deny-egress` ranges accepted (each one is a rule).
pub(crate) const MAX_POLICY_RANGES: usize = 256;

impl EgressPolicy {
    /// Whether a container may connect to `ip` (ignoring the host's own addresses, which
    /// are refused by the `-IN` chain whatever this says). The same order as the rules:
    /// explicit deny, then allow, then the default denied ranges.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !Cidr::default_denied().iter().any(|c| c.contains(ip))
    }

    /// Refuses a policy with too many ranges.
    pub fn check(&self) -> Result<()> {
        let n = self.allow.len() + self.deny.len();
        if n > MAX_POLICY_RANGES {
            return Err(Error::InvalidInput(format!(
                "{n} --allow-egress/--deny-egress ranges; at most {MAX_POLICY_RANGES}"
            )));
        }
        Ok(())
    }
}

/// IPv4 or IPv6, and the tool that writes its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn reject(self) -> &'static str {
        match self {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        }
    }

    fn holds(self, c: &Cidr) -> bool {
        c.is_v4() == (self == Family::V4)
    }
}

/// The chain names of edge `node` (the same in both families).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chains {
    /// Container → other hosts.
    pub forward: String,
    /// Container → this host.
    pub input: String,
    /// Container → a service address (table `nat`): redirected to the edge's service proxy.
    pub services: String,
}

impl Chains {
    /// `DECLOUD-<8 hex digits of FNV-1a(node)>-FWD` / `-IN`: stable, within iptables' 28
    /// characters, different per edge.
    pub(crate) fn of(node: &str) -> Self {
        let mut h: u32 = 0x811c_9dc5;
        for b in node.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        Chains {
            forward: format!("DECLOUD-{h:08x}-FWD"),
            input: format!("DECLOUD-{h:08x}-IN"),
            services: format!("DECLOUD-{h:08x}-SVC"),
        }
    }
}

/// One rule: the chain it goes in and its match and target, as `iptables` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &str, spec: &[&str]) -> Self {
        Rule {
            chain: chain.to_string(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `-A CHAIN spec…`, as `iptables -S` prints it (arguments with spaces quoted).
    pub(crate) fn text(&self) -> String {
        let quoted: Vec<String> = self
            .spec
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            })
            .collect();
        format!("-A {} {}", self.chain, quoted.join(" "))
    }
}

/// Everything one family needs: the edge's chains with their rules, and the jumps into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FamilyRules {
    pub family: Family,
    pub chains: Chains,
    /// The rules of the edge's own chains, in order.
    pub rules: Vec<Rule>,
    /// The jumps from the hooks (`DOCKER-USER` or `FORWARD`, and `INPUT`).
    pub jumps: Vec<Rule>,
    /// Table `nat`: the service redirect's rule and its jump from `PREROUTING` (empty when
    /// service names are off).
    pub nat: Vec<Rule>,
    /// The jumps from `nat PREROUTING`.
    pub nat_jumps: Vec<Rule>,
}

/// Where containers' connections to service addresses go: the edge's service proxy on its
/// bridge's gateway address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceRedirect {
    /// The service address range (`decloud_crds::services::SERVICE_CIDR`).
    pub(crate) range: (std::net::Ipv4Addr, u8),
    /// The bridge's gateway address (the host's side of the edge's network).
    pub(crate) gateway: std::net::Ipv4Addr,
    /// The proxy's port there.
    pub(crate) port: u16,
}

const COMMENT_SERVICES: &str = "decloud: service addresses to the edge's service proxy";
const COMMENT_PROXY: &str = "decloud: the edge's service proxy, redirected connections only";

/// Adds the service redirect to IPv4 rules `r` of edge bridges `bridges`: in `nat`, TCP from
/// the bridge to the service range is DNATed to the proxy; in `-IN`, just before the final
/// refusal, only those redirected connections reach the proxy's one port (a container
/// connecting to the gateway itself is still refused). Pure.
pub(crate) fn with_service_redirect(
    mut r: FamilyRules,
    bridges: &[String],
    redirect: ServiceRedirect,
) -> FamilyRules {
    if r.family != Family::V4 {
        return r;
    }
    let comment = |c: &str| ["-m", "comment", "--comment", c].map(str::to_string);
    let range = format!("{}/{}", redirect.range.0, redirect.range.1);
    let to = format!("{}:{}", redirect.gateway, redirect.port);
    let mut dnat = Rule::new(
        &r.chains.services,
        &["-d", &range, "-p", "tcp", "-m", "tcp"],
    );
    dnat.spec.extend(comment(COMMENT_SERVICES));
    dnat.spec
        .extend(["-j", "DNAT", "--to-destination", &to].map(str::to_string));
    r.nat.push(dnat);
    for br in bridges {
        r.nat_jumps.push(Rule::new(
            "PREROUTING",
            &["-i", br, "-j", r.chains.services.as_str()],
        ));
    }
    let gw = format!("{}/32", redirect.gateway);
    let port = redirect.port.to_string();
    let mut allow = Rule::new(
        &r.chains.input,
        &[
            "-d",
            &gw,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &port,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
        ],
    );
    allow.spec.extend(comment(COMMENT_PROXY));
    allow.spec.extend(["-j", "RETURN"].map(str::to_string));
    // Before the final REJECT of -IN (the last rule of that chain).
    let at = r
        .rules
        .iter()
        .rposition(|x| x.chain == r.chains.input)
        .unwrap_or(r.rules.len());
    r.rules.insert(at, allow);
    r
}

const COMMENT_ISOLATE: &str = "decloud: pods on this edge cannot reach each other";
const COMMENT_REPLIES: &str = "decloud: replies of connections the host opened";
const COMMENT_RESOLVER: &str = "decloud: the host nameservers";
const COMMENT_DENY: &str = "decloud: --deny-egress";
const COMMENT_ALLOW: &str = "decloud: --allow-egress";
const COMMENT_DEFAULT: &str = "decloud: private, loopback, link-local (metadata), multicast";
const COMMENT_HOST: &str = "decloud: containers never reach the host itself";

/// The rules of one family for edge `node` whose containers sit on `bridges`, with
/// `forward_hook` the chain forwarded traffic is hooked in (`DOCKER-USER` or `FORWARD`) and
/// `resolvers` the host's nameservers. Pure: the same input always gives the same text.
pub(crate) fn build(
    family: Family,
    node: &str,
    bridges: &[String],
    forward_hook: &str,
    policy: &EgressPolicy,
    resolvers: &[std::net::IpAddr],
) -> FamilyRules {
    let chains = Chains::of(node);
    let (fwd, inp) = (chains.forward.as_str(), chains.input.as_str());
    let comment = |c: &str| ["-m", "comment", "--comment", c].map(str::to_string);
    let mut rules = Vec::new();
    let mut push = |chain: &str, spec: &[&str], why: &str| {
        let mut r = Rule::new(chain, spec);
        // iptables prints matches in the order given; the comment sits before the target.
        let at = r
            .spec
            .iter()
            .position(|s| s == "-j")
            .unwrap_or(r.spec.len());
        r.spec.splice(at..at, comment(why));
        rules.push(r);
    };
    for br in bridges {
        push(fwd, &["-o", br, "-j", "DROP"], COMMENT_ISOLATE);
    }
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "RETURN",
    ];
    push(fwd, &established, COMMENT_REPLIES);
    let reject = ["-j", "REJECT", "--reject-with", family.reject()];
    let host_of = |ip: &std::net::IpAddr| match family {
        Family::V4 => format!("{ip}/32"),
        Family::V6 => format!("{ip}/128"),
    };
    let resolvers: Vec<String> = resolvers
        .iter()
        .filter(|ip| ip.is_ipv4() == (family == Family::V4) && !ip.is_loopback())
        .map(host_of)
        .collect();
    for chain in [fwd, inp] {
        if chain == inp {
            push(inp, &established, COMMENT_REPLIES);
        }
        for ns in &resolvers {
            for proto in ["udp", "tcp"] {
                push(
                    chain,
                    &[
                        "-d", ns, "-p", proto, "-m", proto, "--dport", "53", "-j", "RETURN",
                    ],
                    COMMENT_RESOLVER,
                );
            }
        }
    }
    for c in policy.deny.iter().filter(|c| family.holds(c)) {
        let d = c.to_string();
        push(
            fwd,
            &[&["-d", d.as_str()][..], &reject].concat(),
            COMMENT_DENY,
        );
    }
    for c in policy.allow.iter().filter(|c| family.holds(c)) {
        let d = c.to_string();
        push(fwd, &["-d", &d, "-j", "RETURN"], COMMENT_ALLOW);
    }
    for c in Cidr::default_denied().iter().filter(|c| family.holds(c)) {
        let d = c.to_string();
        push(
            fwd,
            &[&["-d", d.as_str()][..], &reject].concat(),
            COMMENT_DEFAULT,
        );
    }
    push(inp, &reject, COMMENT_HOST);
    let mut jumps = Vec::new();
    for br in bridges {
        jumps.push(Rule::new(forward_hook, &["-i", br, "-j", fwd]));
        jumps.push(Rule::new("INPUT", &["-i", br, "-j", inp]));
    }
    FamilyRules {
        family,
        chains,
        rules,
        jumps,
        nat: Vec::new(),
        nat_jumps: Vec::new(),
    }
}

/// The nameservers of `/etc/resolv.conf`-style `text` (at most 8).
pub(crate) fn nameservers(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .take(8)
        .collect()
}

// === impl applying the rules ===

/// Runs `tool args…` (with `-w`, waiting for the xtables lock); stdout on success.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut cmd = Command::new(tool);
    cmd.arg("-w").args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Runtime(format!("cannot run {tool}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| Error::Runtime(format!("{tool}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Runtime(format!("{tool}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether chain `chain` exists in `family`'s filter table.
fn chain_exists(family: Family, chain: &str) -> bool {
    run(family.tool(), &["-S", chain], None).is_ok()
}

/// The chain forwarded traffic is hooked in: `DOCKER-USER` where Docker made it, else `FORWARD`.
pub(crate) fn forward_hook(family: Family) -> &'static str {
    if chain_exists(family, "DOCKER-USER") {
        "DOCKER-USER"
    } else {
        "FORWARD"
    }
}

/// `iptables-restore --noflush` input that (re)creates the edge's chains with `rules`:
/// declaring a chain flushes it, and the whole file is one transaction.
fn restore_script(r: &FamilyRules) -> String {
    let mut s = String::from("*filter\n");
    for c in [&r.chains.forward, &r.chains.input] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for rule in &r.rules {
        let _ = writeln!(s, "{}", rule.text());
    }
    s.push_str("COMMIT\n");
    if !r.nat.is_empty() {
        let _ = writeln!(s, "*nat\n:{} - [0:0]", r.chains.services);
        for rule in &r.nat {
            let _ = writeln!(s, "{}", rule.text());
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// Removes every jump into the service chain from `nat PREROUTING`, except those in `keep`.
fn remove_nat_jumps(family: Family, chains: &Chains, keep: &[Rule]) -> Result<()> {
    let Ok(listing) = run(family.tool(), &["-t", "nat", "-S", "PREROUTING"], None) else {
        return Ok(());
    };
    for line in listing.lines() {
        if !line.ends_with(&format!("-j {}", chains.services))
            || keep.iter().any(|k| k.text() == line)
        {
            continue;
        }
        let mut args: Vec<&str> = line.split_whitespace().collect();
        if args.first() == Some(&"-A") {
            args[0] = "-D";
            let args = [&["-t", "nat"][..], &args].concat();
            run(family.tool(), &args, None)?;
        }
    }
    Ok(())
}

/// Removes every jump into `chains` from the hook chains of `family`, except those in `keep`.
fn remove_jumps(family: Family, chains: &Chains, keep: &[Rule]) -> Result<()> {
    for hook in ["DOCKER-USER", "FORWARD", "INPUT"] {
        let Ok(listing) = run(family.tool(), &["-S", hook], None) else {
            continue;
        };
        for line in listing.lines() {
            let ours = [&chains.forward, &chains.input]
                .iter()
                .any(|c| line.ends_with(&format!("-j {c}")));
            if !ours || keep.iter().any(|k| k.text() == line) {
                continue;
            }
            // `-A HOOK spec…` → `-D HOOK spec…`; our jumps carry no quoted arguments.
            let mut args: Vec<&str> = line.split_whitespace().collect();
            if args.first() == Some(&"-A") {
                args[0] = "-D";
                run(family.tool(), &args, None)?;
            }
        }
    }
    Ok(())
}

/// Installs `r`: the chains in one transaction, then the missing jumps at the top of their
/// hooks, and the stale ones (an older bridge) removed.
pub(crate) fn install(r: &FamilyRules) -> Result<()> {
    let tool = r.family.tool();
    let restore = format!("{tool}-restore");
    run(&restore, &["--noflush"], Some(&restore_script(r)))?;
    remove_jumps(r.family, &r.chains, &r.jumps)?;
    for j in &r.jumps {
        let spec: Vec<&str> = j.spec.iter().map(String::as_str).collect();
        let check = [&["-C", j.chain.as_str()][..], &spec].concat();
        if run(tool, &check, None).is_err() {
            let insert = [&["-I", j.chain.as_str(), "1"][..], &spec].concat();
            run(tool, &insert, None)?;
        }
    }
    remove_nat_jumps(r.family, &r.chains, &r.nat_jumps)?;
    for j in &r.nat_jumps {
        let spec: Vec<&str> = j.spec.iter().map(String::as_str).collect();
        let check = [&["-t", "nat", "-C", j.chain.as_str()][..], &spec].concat();
        if run(tool, &check, None).is_err() {
            let insert = [&["-t", "nat", "-I", j.chain.as_str(), "1"][..], &spec].concat();
            run(tool, &insert, None)?;
        }
    }
    Ok(())
}

/// Checks that `r` is in force: every rule present and no others in the edge's chains, every
/// jump present with no `ACCEPT` ahead of it, `DOCKER-USER` itself reached first, and bridged
/// traffic passed to iptables (`br_netfilter`, turned on if off).
pub(crate) fn verify(r: &FamilyRules) -> Result<()> {
    let tool = r.family.tool();
    let fail =
        |what: String| Error::Runtime(format!("egress policy not in force ({tool}): {what}"));
    for rule in r.rules.iter().chain(&r.jumps) {
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        let check = [&["-C", rule.chain.as_str()][..], &spec].concat();
        run(tool, &check, None).map_err(|e| fail(format!("missing {}: {e}", rule.text())))?;
    }
    for chain in [&r.chains.forward, &r.chains.input] {
        let listing = run(tool, &["-S", chain], None).map_err(|e| fail(e.to_string()))?;
        let have = listing.lines().filter(|l| l.starts_with("-A ")).count();
        let want = r.rules.iter().filter(|x| &x.chain == chain).count();
        if have != want {
            return Err(fail(format!("{chain} holds {have} rules, expected {want}")));
        }
    }
    let mut hooks: Vec<(&str, String)> = r
        .jumps
        .iter()
        .map(|j| (j.chain.as_str(), j.text()))
        .collect();
    if r.jumps.iter().any(|j| j.chain == "DOCKER-USER") {
        hooks.push(("FORWARD", "-A FORWARD -j DOCKER-USER".to_string()));
    }
    for (hook, jump) in hooks {
        let listing = run(tool, &["-S", hook], None).map_err(|e| fail(e.to_string()))?;
        let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
        let Some(at) = rules.iter().position(|l| *l == jump) else {
            return Err(fail(format!("no `{jump}` in {hook}")));
        };
        if let Some(before) = rules[..at].iter().find(|l| l.contains("-j ACCEPT")) {
            return Err(fail(format!("`{before}` comes before `{jump}`")));
        }
    }
    for rule in r.nat.iter().chain(&r.nat_jumps) {
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        let check = [&["-t", "nat", "-C", rule.chain.as_str()][..], &spec].concat();
        run(tool, &check, None).map_err(|e| fail(format!("missing nat {}: {e}", rule.text())))?;
    }
    if !r.jumps.is_empty() {
        bridged_traffic_filtered(r.family).map_err(fail)?;
    }
    Ok(())
}

/// Makes sure the kernel passes bridged frames to iptables, without which pods on one bridge
/// could reach each other.
fn bridged_traffic_filtered(family: Family) -> std::result::Result<(), String> {
    let key = match family {
        Family::V4 => "/proc/sys/net/bridge/bridge-nf-call-iptables",
        Family::V6 => "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    };
    let read = || std::fs::read_to_string(key).map(|s| s.trim() == "1");
    if read().unwrap_or(false) {
        return Ok(());
    }
    if std::fs::metadata(key).is_err() {
        let _ = Command::new("modprobe").arg("br_netfilter").status();
    }
    let _ = std::fs::write(key, "1");
    match read() {
        Ok(true) => Ok(()),
        _ => Err(format!(
            "{key} is not 1 (load br_netfilter): pods on one bridge could reach each other"
        )),
    }
}

/// `iptables -S` of the edge's chains in `family` (empty if absent).
pub(crate) fn listing(family: Family, chains: &Chains) -> Vec<String> {
    let mut out = Vec::new();
    for c in [&chains.forward, &chains.input] {
        if let Ok(l) = run(family.tool(), &["-S", c], None) {
            out.extend(l.lines().map(|l| format!("{}: {l}", family.tool())));
        }
    }
    if let Ok(l) = run(family.tool(), &["-t", "nat", "-S", &chains.services], None) {
        out.extend(l.lines().map(|l| format!("{} -t nat: {l}", family.tool())));
    }
    out
}

/// Removes the jumps and chains of edge `node` in both families. Absent ones are fine.
pub(crate) fn uninstall(node: &str) -> Result<()> {
    let chains = Chains::of(node);
    for family in [Family::V4, Family::V6] {
        if run(family.tool(), &["-S", "INPUT"], None).is_err() {
            continue; // no such tool or table here: nothing was installed
        }
        remove_jumps(family, &chains, &[])?;
        for c in [&chains.forward, &chains.input] {
            if chain_exists(family, c) {
                run(family.tool(), &["-F", c], None)?;
                run(family.tool(), &["-X", c], None)?;
            }
        }
        remove_nat_jumps(family, &chains, &[])?;
        if run(family.tool(), &["-t", "nat", "-S", &chains.services], None).is_ok() {
            run(family.tool(), &["-t", "nat", "-F", &chains.services], None)?;
            run(family.tool(), &["-t", "nat", "-X", &chains.services], None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn texts(r: &FamilyRules) -> Vec<String> {
        r.rules.iter().chain(&r.jumps).map(Rule::text).collect()
    }

    #[test]
    fn chain_names_are_per_edge_short_and_stable() {
        let a = Chains::of("edge-alice");
        assert_eq!(a, Chains::of("edge-alice"));
        assert_ne!(a.forward, Chains::of("edge-bob").forward);
        assert!(a.forward.len() <= 28 && a.input.len() <= 28, "{a:?}");
        assert!(a.forward.starts_with("DECLOUD-") && a.forward.ends_with("-FWD"));
    }

    #[test]
    fn default_v4_rules_text() {
        let p = EgressPolicy::default();
        let r = build(
            Family::V4,
            "edge-a",
            &["br-x".into()],
            "DOCKER-USER",
            &p,
            &[
                "10.255.255.53".parse().unwrap(),
                "127.0.0.53".parse().unwrap(),
            ],
        );
        let (f, i) = (&r.chains.forward, &r.chains.input);
        let t = texts(&r);
        let c = |s: &str| format!("-m comment --comment \"{s}\"");
        let want_start = [
            format!("-A {f} -o br-x {} -j DROP", c(COMMENT_ISOLATE)),
            format!(
                "-A {f} -m conntrack --ctstate RELATED,ESTABLISHED {} -j RETURN",
                c(COMMENT_REPLIES)
            ),
            format!(
                "-A {f} -d 10.255.255.53/32 -p udp -m udp --dport 53 {} -j RETURN",
                c(COMMENT_RESOLVER)
            ),
        ];
        for (k, w) in want_start.iter().enumerate() {
            assert_eq!(&t[k], w);
        }
        assert!(
            t.iter().all(|l| !l.contains("127.0.0.53")),
            "loopback resolver: {t:#?}"
        );
        for range in super::super::cidr::DENIED_V4 {
            let line = format!(
                "-A {f} -d {range} {} -j REJECT --reject-with icmp-port-unreachable",
                c(COMMENT_DEFAULT)
            );
            assert!(t.contains(&line), "{line} not in {t:#?}");
        }
        assert!(t.iter().all(|l| !l.contains("fc00::")));
        let host = format!(
            "-A {i} {} -j REJECT --reject-with icmp-port-unreachable",
            c(COMMENT_HOST)
        );
        let jumps = [
            format!("-A DOCKER-USER -i br-x -j {f}"),
            format!("-A INPUT -i br-x -j {i}"),
        ];
        assert_eq!(t[t.len() - 3], host);
        assert_eq!(t[t.len() - 2..], jumps);
        // The public internet is not refused: nothing matches everything except on -IN.
        assert!(
            r.rules.iter().filter(|x| &x.chain == f).all(|x| x
                .spec
                .iter()
                .any(|s| s == "-d" || s == "-o" || s == "conntrack")),
            "{t:#?}"
        );
    }

    #[test]
    fn flags_adjust_the_rules_in_order_deny_allow_default() {
        let p = EgressPolicy {
            allow: cidrs(&["192.168.50.0/24", "fd00:1::/64"]),
            deny: cidrs(&["192.168.50.7/32", "203.0.113.0/24"]),
        };
        let r = build(Family::V4, "edge-a", &["br-x".into()], "FORWARD", &p, &[]);
        let t = texts(&r);
        let pos = |needle: &str| {
            t.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {t:#?}"))
        };
        assert!(pos("-d 192.168.50.7/32") < pos("-d 192.168.50.0/24"));
        assert!(
            pos("-d 192.168.50.0/24 -m comment --comment \"decloud: --allow-egress\" -j RETURN")
                < pos("-d 192.168.0.0/16")
        );
        assert!(t[pos("-d 203.0.113.0/24")].contains("REJECT"));
        assert!(
            t.iter().all(|l| !l.contains("fd00:1::")),
            "v6 range in v4 rules"
        );
        assert!(
            t.iter()
                .any(|l| l == &format!("-A FORWARD -i br-x -j {}", r.chains.forward))
        );
        let v6 = texts(&build(
            Family::V6,
            "edge-a",
            &["br-x".into()],
            "FORWARD",
            &p,
            &[],
        ));
        assert!(
            v6.iter()
                .any(|l| l.contains("-d fd00:1::/64") && l.ends_with("-j RETURN"))
        );
        assert!(
            v6.iter()
                .any(|l| l.contains("-d fc00::/7") && l.contains("icmp6-port-unreachable"))
        );
        assert!(v6.iter().all(|l| !l.contains("192.168")));
    }

    #[test]
    fn the_policy_decides_like_the_rules() {
        let p = EgressPolicy {
            allow: cidrs(&["192.168.50.0/24"]),
            deny: cidrs(&["192.168.50.7/32", "8.8.8.0/24"]),
        };
        for (ip, ok) in [
            ("1.1.1.1", true),
            ("8.8.8.8", false),
            ("192.168.50.3", true),
            ("192.168.50.7", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("10.1.2.3", false),
            ("100.64.0.1", false),
            ("127.0.0.1", false),
            ("224.0.0.251", false),
            ("::1", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("2001:4860::1", true),
            ("::ffff:10.0.0.1", false),
        ] {
            assert_eq!(p.allows(ip.parse().unwrap()), ok, "{ip}");
        }
        let many = EgressPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap(); MAX_POLICY_RANGES + 1],
            deny: vec![],
        };
        assert!(many.check().is_err());
        assert!(p.check().is_ok());
    }

    #[test]
    fn restore_script_quotes_comments_and_declares_chains() {
        let r = build(
            Family::V4,
            "edge-a",
            &["br-x".into()],
            "DOCKER-USER",
            &EgressPolicy::default(),
            &[],
        );
        let s = restore_script(&r);
        assert!(s.starts_with("*filter\n:DECLOUD-"), "{s}");
        assert!(s.ends_with("COMMIT\n"));
        assert!(
            s.contains("--comment \"decloud: pods on this edge cannot reach each other\""),
            "{s}"
        );
        assert!(
            !s.contains("DOCKER-USER"),
            "jumps are inserted separately: {s}"
        );
    }

    #[test]
    fn the_service_redirect_opens_one_port_to_redirected_connections_only() {
        let base = build(
            Family::V4,
            "edge-a",
            &["br-x".into()],
            "DOCKER-USER",
            &EgressPolicy::default(),
            &[],
        );
        let redirect = ServiceRedirect {
            range: ("100.64.0.0".parse().unwrap(), 10),
            gateway: "172.30.0.1".parse().unwrap(),
            port: 15001,
        };
        let r = with_service_redirect(base.clone(), &["br-x".into()], redirect);
        let i = &r.chains.input;
        let ins: Vec<String> = r
            .rules
            .iter()
            .filter(|x| &x.chain == i)
            .map(Rule::text)
            .collect();
        let n = ins.len();
        assert_eq!(
            ins[n - 2],
            format!(
                "-A {i} -d 172.30.0.1/32 -p tcp -m tcp --dport 15001 -m conntrack --ctstate DNAT -m comment --comment \"{COMMENT_PROXY}\" -j RETURN"
            )
        );
        assert!(
            ins[n - 1].contains("REJECT"),
            "the refusal stays last: {ins:#?}"
        );
        assert_eq!(r.rules.len(), base.rules.len() + 1);
        assert_eq!(
            r.nat[0].text(),
            format!(
                "-A {} -d 100.64.0.0/10 -p tcp -m tcp -m comment --comment \"{COMMENT_SERVICES}\" -j DNAT --to-destination 172.30.0.1:15001",
                r.chains.services
            )
        );
        assert_eq!(
            r.nat_jumps[0].text(),
            format!("-A PREROUTING -i br-x -j {}", r.chains.services)
        );
        assert!(restore_script(&r).contains("*nat\n"));
        let v6 = build(
            Family::V6,
            "edge-a",
            &["br-x".into()],
            "FORWARD",
            &EgressPolicy::default(),
            &[],
        );
        assert_eq!(
            with_service_redirect(v6.clone(), &["br-x".into()], redirect),
            v6
        );
    }

    #[test]
    fn nameservers_are_read() {
        let t = "# x\nnameserver 10.255.255.53\nsearch a\nnameserver ::1\nnameserver bogus\n";
        let ns = nameservers(t);
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0].to_string(), "10.255.255.53");
    }
}
