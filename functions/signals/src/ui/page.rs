//! The operations page as server-rendered HTML: no scripts needed to read it (one tiny script
//! only reloads it while nobody is typing a token), every value escaped.

use super::overview::{Overview, RunPoint, SourceView};
use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
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

/// A duration as operators read it: 42s, 7m, 3h, 2d.
pub fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%}td,th{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}\
.state{font-weight:600}.done{color:#2a7}.blocked,.behind{color:#c33}.paused{color:#a70}\
.bar{background:#eee;width:14em;height:.9em;border-radius:3px;overflow:hidden;display:inline-block}\
.bar>span{display:block;height:100%;background:#38c}\
.notice{background:#eef8ee;border:1px solid #9c9;padding:.5em}.error{background:#fbeaea;border:1px solid #d99;padding:.5em}\
.err{font-family:monospace;font-size:12px;max-width:40em;white-space:pre-wrap;word-break:break-word}\
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .2em 0 .8em}";

/// Reloads every 15 s unless a token field holds text or has focus.
const RELOAD: &str = "setInterval(function(){var a=document.activeElement;\
var typing=[].some.call(document.querySelectorAll('input[name=token]'),function(i){return i.value!==''||i===a});\
if(!typing)location.reload()},15000);";

/// Renders the whole page. `can_retry`: an operator token is configured.
pub fn render(o: &Overview, can_retry: bool, notice: Option<&str>) -> String {
    let mut h = String::new();
    let behind = o.tenants.iter().flat_map(|t| &t.sources).filter(|s| s.behind).count();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Signals ETL — operations</title>\
         <meta name=viewport content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <h1>Signals ETL — operations</h1><p id=summary>{} tenants · {} data sources · <span class={}>{behind} behind</span> · \
         {} running · queue {} jobs{} · <span class={}>{} open dead letters</span> · read {}</p>",
        o.tenants.len(),
        o.tenants.iter().map(|t| t.sources.len()).sum::<usize>(),
        if behind > 0 { "behind" } else { "done" },
        o.running.len(),
        o.queue_depth,
        o.oldest_job_secs.map_or(String::new(), |s| format!(" (oldest {})", ago(s))),
        if o.dead_letters.is_empty() { "done" } else { "blocked" },
        o.dead_letters.len(),
        o.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    if let Some(n) = notice {
        let _ = write!(h, "<p class=notice id=notice>{}</p>", esc(n));
    }
    running(&mut h, o);
    sources(&mut h, o);
    dead_letters(&mut h, o, can_retry);
    let _ = write!(h, "<script>{RELOAD}</script></body></html>");
    h
}

fn running(h: &mut String, o: &Overview) {
    h.push_str("<h2>Running syncs</h2>");
    if o.running.is_empty() {
        h.push_str("<p>None.</p>");
        return;
    }
    h.push_str("<table id=running><tr><th>tenant</th><th>data source</th><th>kind</th><th>state</th><th>progress</th><th class=num>chunks</th><th class=num>batches</th><th></th></tr>");
    for r in &o.running {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"state {}\">{}</td>\
             <td><span class=bar role=progressbar aria-valuenow={pct:.0} aria-valuemin=0 aria-valuemax=100><span style=\"width:{pct:.1}%\"></span></span> {pct:.0}%</td>\
             <td class=num>{}/{}</td><td class=num>{}/{}</td><td>{}</td></tr>",
            esc(&r.tenant),
            esc(&r.source),
            r.kind,
            esc(&r.state),
            esc(&r.state),
            r.chunks.0,
            r.chunks.1,
            r.batches.0,
            r.batches.1,
            esc(&r.progress),
            pct = r.fraction * 100.0,
        );
    }
    h.push_str("</table>");
}

fn sources(h: &mut String, o: &Overview) {
    h.push_str("<h2>Tenants and data sources</h2>");
    if o.tenants.is_empty() {
        h.push_str("<p>No config applied yet (<code>signals config apply FILE</code>).</p>");
        return;
    }
    h.push_str(
        "<p class=legend>changes per run, oldest to newest:<span style=background:#2a7></span>inserts\
         <span style=background:#38c></span>updates<span style=background:#c33></span>deletes</p>\
         <table id=sources><tr><th>tenant</th><th>data source</th><th>state</th><th>last sync</th><th class=num>lag</th>\
         <th class=num>rows (last run)</th><th class=num>changes (last run)</th><th>recent runs</th><th>last error</th></tr>",
    );
    for t in &o.tenants {
        for s in &t.sources {
            source_row(h, &t.id, t.paused, s);
        }
    }
    h.push_str("</table>");
}

fn source_row(h: &mut String, tenant: &str, tenant_paused: bool, s: &SourceView) {
    let last = s.recent.last();
    let _ = write!(
        h,
        "<tr data-tenant=\"{t}\" data-source=\"{id}\"><td>{t}{}</td><td>{id}</td><td class=\"state {st}\">{st}</td><td>{}</td>\
         <td class=\"num{}\">{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td><td class=err>{}</td></tr>",
        if tenant_paused { " (paused)" } else { "" },
        s.last_success_at
            .map_or("never".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
        if s.behind { " behind" } else { "" },
        s.lag_secs.map_or("-".to_owned(), ago),
        last.map_or("-".to_owned(), |r| r.rows_read.to_string()),
        last.map_or("-".to_owned(), |r| (r.inserts + r.updates + r.deletes).to_string()),
        chart(&s.recent),
        esc(s.last_error.as_deref().unwrap_or("")),
        t = esc(tenant),
        id = esc(&s.id),
        st = esc(&s.state),
    );
}

/// Stacked bars of inserts, updates and deletes per run, scaled to the largest run.
fn chart(runs: &[RunPoint]) -> String {
    const W: usize = 8;
    const H: f64 = 36.0;
    let max = runs
        .iter()
        .map(|r| r.inserts + r.updates + r.deletes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = format!(
        "<svg class=chart width={} height={H} role=img aria-label=\"changes per run\">",
        runs.len().max(1) * W
    );
    for (i, r) in runs.iter().enumerate() {
        let mut y = H;
        for (n, colour) in [(r.inserts, "#2a7"), (r.updates, "#38c"), (r.deletes, "#c33")] {
            let height = n as f64 / max * H;
            y -= height;
            if n > 0 {
                let _ = write!(
                    svg,
                    "<rect x={} y={y:.1} width={} height={height:.1} fill=\"{colour}\"></rect>",
                    i * W,
                    W - 2
                );
            }
        }
        let _ = write!(
            svg,
            "<rect x={} y=0 width={} height={H} fill=transparent><title>{} {} run {}: {} rows read, {} inserts, {} updates, {} deletes</title></rect>",
            i * W,
            W - 1,
            r.at.format("%Y-%m-%d %H:%M"),
            r.kind,
            esc(&r.run_id),
            r.rows_read,
            r.inserts,
            r.updates,
            r.deletes
        );
    }
    svg.push_str("</svg>");
    svg
}

fn dead_letters(h: &mut String, o: &Overview, can_retry: bool) {
    h.push_str("<h2>Dead letters</h2>");
    if o.dead_letters.is_empty() {
        h.push_str("<p id=no-dead-letters>No open dead letters.</p>");
        return;
    }
    if !can_retry {
        h.push_str(
            "<p>Read-only: start <code>signals ui</code> with <code>--operator-token</code> to retry from here, \
             or use <code>signals dlq retry ID</code>.</p>",
        );
    }
    h.push_str("<table id=dead-letters><tr><th class=num>id</th><th>tenant</th><th>data source</th><th>stage</th><th class=num>attempts</th><th>since</th><th>error</th><th></th></tr>");
    for d in &o.dead_letters {
        let action = if can_retry {
            format!(
                "<form method=post action=\"/dead-letters/{id}/retry\"><input type=password name=token \
                 placeholder=\"operator token\" aria-label=\"operator token for dead letter {id}\" autocomplete=off> \
                 <button type=submit>Retry</button></form>",
                id = d.id
            )
        } else {
            "<button type=button disabled title=\"no operator token configured\">Retry</button>".to_owned()
        };
        let _ = write!(
            h,
            "<tr data-dead-letter={}><td class=num>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td class=err>{}</td><td>{action}</td></tr>",
            d.id,
            d.id,
            esc(d.tenant.as_deref().unwrap_or("-")),
            esc(d.source.as_deref().unwrap_or("-")),
            esc(&d.stage),
            d.attempts,
            d.created_at.format("%Y-%m-%d %H:%M:%S"),
            esc(&d.error),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<b a=\"1\">&'</b>"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn durations_read_like_an_operator_says_them() {
        assert_eq!(
            [ago(5.0), ago(600.0), ago(10_800.0), ago(200_000.0), ago(-3.0)],
            ["5s", "10m", "3h", "2d", "0s"].map(String::from)
        );
    }

    #[test]
    fn the_chart_scales_to_the_largest_run() {
        let run = |i: i64, u: i64, d: i64| RunPoint {
            run_id: "r".into(),
            kind: "interval",
            at: chrono::Utc::now(),
            rows_read: 10,
            inserts: i,
            updates: u,
            deletes: d,
        };
        let svg = chart(&[run(36, 0, 0), run(0, 9, 9)]);
        assert!(
            svg.contains("<rect x=0 y=0.0 width=6 height=36.0 fill=\"#2a7\">"),
            "{svg}"
        );
        assert!(
            svg.contains("<rect x=8 y=27.0 width=6 height=9.0 fill=\"#38c\">"),
            "{svg}"
        );
        assert!(
            svg.contains("<rect x=8 y=18.0 width=6 height=9.0 fill=\"#c33\">"),
            "{svg}"
        );
    }
}
