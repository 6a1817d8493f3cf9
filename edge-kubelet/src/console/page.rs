//! The console's HTML: server-rendered, no external assets (it works offline), a few lines of
//! script that refresh the live part every few seconds. Every value from outside (pod names,
//! images, messages) is escaped.

use crate::local::EdgeReport;

use super::LendingState;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn mib(bytes: i64) -> i64 {
    bytes.max(0) >> 20
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
.ok{color:#176f2c}.bad{color:#a11}.flash{padding:.5em 1em;border:1px solid #ccc;margin:1em 0}\
form{display:inline-block;margin:.2em}input[type=text]{width:7em}button{padding:.3em 1em}";

const SCRIPT: &str = "setInterval(function(){fetch('/live',{credentials:'same-origin'})\
.then(function(r){return r.ok?r.text():null}).then(function(t){if(t!==null){document.getElementById('live').innerHTML=t}})\
.catch(function(){})},3000);";

/// The part refreshed in place: connection, usage against the offer, given, apps.
pub(super) fn live(r: &EdgeReport, a: &LendingState) -> String {
    let alive = std::path::Path::new(&format!("/proc/{}", r.pid)).exists();
    let (conn_class, conn) = if r.connected && alive {
        ("ok", "connected")
    } else {
        ("bad", "not connected (retrying; pods keep running)")
    };
    let running: Vec<_> = r
        .pods
        .iter()
        .filter(|p| p.phase == "running" || p.phase == "pending")
        .collect();
    let cpu: i64 = running.iter().map(|p| p.cpu_request_millis).sum();
    let mem: i64 = running.iter().map(|p| p.memory_request_bytes).sum();
    let disk: i64 = r.pods.iter().map(|p| p.storage_bytes.max(0)).sum();
    let mut out = format!(
        "<p>Operator: <span id=\"connection\" class=\"{conn_class}\">{conn}</span> \
         ({operator}) &middot; Lending: <span id=\"availability\">{avail}</span> &middot; \
         Schedule: <span id=\"schedule\">{schedule}</span></p>\n\
         <table id=\"usage\"><tr><th></th><th>in use</th><th>offered</th></tr>\n\
         <tr><td>CPU (millicores, requested)</td><td id=\"cpu-used\">{cpu}</td><td id=\"cpu-offered\">{cpu_off}</td></tr>\n\
         <tr><td>Memory (MiB, requested)</td><td id=\"memory-used\">{mem}</td><td id=\"memory-offered\">{mem_off}</td></tr>\n\
         <tr><td>Disk (MiB, written by pods)</td><td id=\"disk-used\">{disk}</td><td id=\"disk-offered\">{disk_off}</td></tr>\n\
         <tr><td>Pods</td><td id=\"pods-used\">{pods}</td><td id=\"pods-offered\">{pods_off}</td></tr>\n\
         </table>\n\
         <p>Given today: <span id=\"given-today\">{today_cpu:.3} CPU-hours, {today_mem:.4} GiB-hours</span>; \
         in total: <span id=\"given-total\">{total_cpu:.3} CPU-hours, {total_mem:.4} GiB-hours</span>. \
         Connected <span id=\"reliability\">{rel:.1}%</span> of the time this agent ran.</p>\n",
        operator = esc(&r.operator),
        avail = esc(if a.state.is_empty() {
            "available"
        } else {
            &a.state
        }),
        schedule = esc(a.schedule.as_deref().unwrap_or("always (no schedule set)")),
        cpu_off = r.offered_cpu_millis,
        mem_off = mib(r.offered_memory_bytes),
        disk = mib(disk),
        disk_off = mib(r.offered_storage_bytes),
        mem = mib(mem),
        pods = running.len(),
        pods_off = r.offered_pods,
        today_cpu = r.given_today.cpu_seconds / 3600.0,
        today_mem = r.given_today.memory_gib_hours,
        total_cpu = r.given_total.cpu_seconds / 3600.0,
        total_mem = r.given_total.memory_gib_hours,
        rel = r.connected_ratio * 100.0,
    );
    out.push_str(
        "<h2>What runs here</h2>\n<table id=\"apps\"><tr><th>app (namespace/name)</th><th>image</th><th>phase</th><th>ready</th><th>CPU-s used</th></tr>\n",
    );
    if r.pods.is_empty() {
        out.push_str("<tr><td colspan=\"5\">nothing yet</td></tr>\n");
    }
    for p in &r.pods {
        out.push_str(&format!(
            "<tr class=\"app\" data-pod=\"{pod}\"><td>{pod}</td><td>{images}</td><td>{phase}</td><td>{ready}</td><td>{cpu:.1}</td></tr>\n",
            pod = esc(&p.pod),
            images = esc(&p.images.join(", ")),
            phase = esc(&p.phase),
            ready = if p.ready { "yes" } else { "no" },
            cpu = p.cpu_seconds,
        ));
    }
    out.push_str("</table>\n");
    out
}

/// The whole page.
pub(super) fn full(
    r: &EdgeReport,
    a: &LendingState,
    csrf: &str,
    flash: Option<&(bool, String)>,
) -> String {
    let csrf = esc(csrf);
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
    let flash = flash
        .map(|(ok, text)| {
            format!(
                "<p id=\"flash\" class=\"flash {}\">{}</p>\n",
                if *ok { "ok" } else { "bad" },
                esc(text)
            )
        })
        .unwrap_or_default();
    let cpu = format!("{}m", r.offered_cpu_millis);
    let memory = format!("{}Mi", mib(r.offered_memory_bytes));
    let storage = format!("{}Mi", mib(r.offered_storage_bytes));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>DeCloud console: {name}</title><style>{STYLE}</style></head><body>\n\
         <h1>DeCloud: <span id=\"provider\">{name}</span></h1>\n{flash}\
         <div id=\"live\">{live}</div>\n\
         <h2>Lending</h2>\n\
         <form method=\"post\" action=\"/pause\">{hidden}<button id=\"pause\" type=\"submit\">Pause</button></form>\
         <form method=\"post\" action=\"/resume\">{hidden}<button id=\"resume\" type=\"submit\">Resume</button></form>\
         <form method=\"post\" action=\"/drain\">{hidden}<button id=\"drain\" type=\"submit\">Drain (move the apps elsewhere)</button></form>\n\
         <h2>Offer</h2>\n<form id=\"offer\" method=\"post\" action=\"/offer\">{hidden}\
         <label>CPU <input type=\"text\" name=\"cpu\" id=\"offer-cpu\" value=\"{cpu}\" maxlength=\"32\"></label> \
         <label>Memory <input type=\"text\" name=\"memory\" id=\"offer-memory\" value=\"{memory}\" maxlength=\"32\"></label> \
         <label>Storage <input type=\"text\" name=\"storage\" id=\"offer-storage\" value=\"{storage}\" maxlength=\"32\"></label> \
         <label>Pods <input type=\"text\" name=\"pods\" id=\"offer-pods\" value=\"{pods}\" maxlength=\"32\"></label> \
         <button id=\"offer-apply\" type=\"submit\">Apply</button></form>\n\
         <p>Running apps keep running when the offer shrinks; new ones must fit it.</p>\n\
         <script>{SCRIPT}</script>\n</body></html>\n",
        name = esc(&r.provider),
        live = live(r, a),
        pods = r.offered_pods,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::PodLine;

    #[test]
    fn escapes_what_tenants_name_and_shows_the_numbers() {
        let r = EdgeReport {
            provider: "alice".into(),
            offered_cpu_millis: 2000,
            offered_memory_bytes: 4 << 30,
            offered_pods: 10,
            pods: vec![PodLine {
                pod: "ns/<script>x</script>".into(),
                phase: "running".into(),
                images: vec!["img\"<b>".into()],
                cpu_request_millis: 250,
                memory_request_bytes: 64 << 20,
                ..Default::default()
            }],
            ..Default::default()
        };
        let page = full(&r, &LendingState::default(), "tok\"", None);
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("ns/&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("img&quot;&lt;b&gt;"));
        assert!(page.contains("value=\"tok&quot;\""));
        assert!(page.contains("<td id=\"cpu-used\">250</td><td id=\"cpu-offered\">2000</td>"));
        assert!(page.contains("<td id=\"memory-used\">64</td><td id=\"memory-offered\">4096</td>"));
        assert!(page.contains("<td id=\"pods-used\">1</td><td id=\"pods-offered\">10</td>"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }
}
