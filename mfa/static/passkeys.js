// Passkeys: run the WebAuthn ceremony the server prepared (options in data-options, with a
// single-use challenge kept by the server), put the browser's answer in the form and submit it.
(function () {
  "use strict";

  function toBytes(b64url) {
    var b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return bytes.buffer;
  }

  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (c) {
      return { type: c.type, id: toBytes(c.id), transports: c.transports };
    });
  }

  function publicKey(mode, json) {
    var options = JSON.parse(json);
    options.challenge = toBytes(options.challenge);
    if (mode === "create") {
      options.user.id = toBytes(options.user.id);
      options.excludeCredentials = descriptors(options.excludeCredentials);
    } else {
      options.allowCredentials = descriptors(options.allowCredentials);
    }
    return options;
  }

  function answer(credential) {
    if (typeof credential.toJSON === "function") { return JSON.stringify(credential.toJSON()); }
    var r = credential.response;
    var response = { clientDataJSON: toB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toB64url(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toB64url(r.authenticatorData);
      response.signature = toB64url(r.signature);
      if (r.userHandle) { response.userHandle = toB64url(r.userHandle); }
    }
    return JSON.stringify({
      id: credential.id, rawId: toB64url(credential.rawId), type: credential.type,
      response: response, clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment
    });
  }

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    var button = form.querySelector("[data-passkey-button]");
    var status = form.querySelector("[data-passkey-status]");
    if (!window.PublicKeyCredential || !navigator.credentials) { return; }
    form.querySelector("[data-passkey-unsupported]").hidden = true;
    button.hidden = false;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      status.hidden = true;
      button.disabled = true;
      var mode = form.getAttribute("data-passkey");
      var options = { publicKey: publicKey(mode, form.getAttribute("data-options")) };
      var ceremony = mode === "create"
        ? navigator.credentials.create(options) : navigator.credentials.get(options);
      ceremony.then(function (credential) {
        form.querySelector("input[name=credential]").value = answer(credential);
        form.submit();
      }).catch(function () {
        status.textContent = "No passkey was used. Try again, or use another way below.";
        status.hidden = false;
        button.disabled = false;
      });
    });
  });
})();
