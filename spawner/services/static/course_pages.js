// What the course service's pages share: elements are built with textContent, never from markup in the data.
window.teachlabPages = (function () {
  "use strict";

  function element(tag, attributes, children) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(function ([key, value]) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  return { element: element };
})();
