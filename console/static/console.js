// A little progressive enhancement; every page works without it.
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll('input[name="task"][type="checkbox"]').forEach((b) => { b.checked = all.checked; });
    });
  }
  // The inbox refreshes its count without a reload; a changed count offers a reload.
  const count = document.getElementById("alert-count");
  if (count) {
    setInterval(async () => {
      const resp = await fetch(location.pathname.replace(/\/(inbox)?$/, "") + "/inbox.json" + location.search,
                               { credentials: "same-origin" });
      if (!resp.ok) return;
      const data = await resp.json();
      if (String(data.count) !== count.textContent) {
        count.textContent = data.count;
        count.classList.add("changed");
        count.title = "the inbox changed: reload to see it";
      }
    }, 30000);
  }
});
