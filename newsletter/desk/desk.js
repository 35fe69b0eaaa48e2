// The desk's only script: a live preview of the intro's Markdown while it is typed.
// The server renders it (the same sanitiser as the issue); nothing here builds HTML.
(function () {
  var intro = document.getElementById("intro");
  var target = document.getElementById("intro-preview");
  if (!intro || !target) return;
  var form = intro.form, timer = null, asked = 0;
  function refresh() {
    var body = new URLSearchParams();
    body.set("csrf_token", form.elements.csrf_token.value);
    body.set("intro", intro.value);
    var mine = ++asked;
    fetch(target.dataset.url, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { if (mine === asked) { target.innerHTML = html; } })
      .catch(function () { /* the saved intro still shows after Save */ });
  }
  intro.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(refresh, 250); });
})();
