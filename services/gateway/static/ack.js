// The acknowledgement page (services/gateway/acknowledge.py). Opening the
// link never acknowledges: link scanners and chat previews fetch links. Where
// scripts run, this sends the page's form once the page is shown to a person,
// so one tap on the link is enough; without scripts the button does it.
(function () {
  "use strict";
  var form = document.getElementById("ack");
  if (!form) {
    return;
  }
  var sent = false;
  function send() {
    if (sent || document.visibilityState !== "visible") {
      return;
    }
    sent = true;
    form.submit();
  }
  // a tap on the button while the form is already on its way sends nothing more
  form.addEventListener("submit", function (event) {
    if (sent) {
      event.preventDefault();
    }
    sent = true;
  });
  // a page prerendered or opened in the background waits until it is seen
  document.addEventListener("visibilitychange", send);
  send();
})();
