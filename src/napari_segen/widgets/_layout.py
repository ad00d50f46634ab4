"""Layout helpers that keep a docked widget from resizing the napari window.

napari's dock takes a widget's minimum size as its own, and the main window
grows to fit its docks. Two things made ours grow it: a status label whose
minimum width is its whole text (one long message widened the window past the
screen), and forms taller than the screen (four widgets docked made the window
2732 px high). Each widget therefore:

* shows status and readout text in labels from :func:`fit_label` - wrapped (or
  clipped) to the dock's width, the full text in the tooltip, selectable;
* puts its form in a scroll area (:func:`make_scrollable`), so docking every
  widget only adds a vertical scroll bar; drop-down lists in it may shrink
  (their text cut short, the whole choice in the tooltip) rather than widen the
  form, so a long model name chosen after the dock opened does not make it
  scroll sideways;
* keeps rarely changed settings in a :func:`collapsible` section.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label

#: Name of the scroll area :func:`make_scrollable` puts in a widget (tests look for it).
SCROLL_NAME = "napari_segen_scroll"


def fit_label(label: Label, *, wrap: bool = True, selectable: bool = True) -> Label:
    """Make ``label`` never widen its dock: wrapped (or clipped), full text in its tooltip.

    With ``wrap`` the text wraps at word boundaries to the dock's width; without
    it, the label keeps one line and is clipped (its height never changes, for
    a status that changes many times a second). Its tooltip follows its text,
    so the whole message is one hover away; ``selectable`` lets the user copy it.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(wrap)
    native.setMinimumWidth(0)
    vertical = QSizePolicy.Policy.Preferred if wrap else QSizePolicy.Policy.Fixed
    native.setSizePolicy(QSizePolicy.Policy.Ignored, vertical)
    if selectable:
        native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if not wrap:  # clipped on the right, so the start of the message is always readable
        native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

    # A Label emits no ``changed`` (QLabel has no such signal): follow its setter instead.
    backend = label._widget
    set_text = backend._mgui_set_value

    def _set_value(value: Any) -> None:
        set_text(value)
        native.setToolTip(str(value) if value else "")

    backend._mgui_set_value = _set_value
    _set_value(label.value)
    return label


def full_width(*widgets: Any) -> None:
    """Give each of ``widgets`` (in a labelled form) the whole row: no empty label column.

    For explanations under a value and for unlabelled sub-forms, which are
    otherwise squeezed into the value column and wrap into many short lines.
    """
    for widget in widgets:
        labeled = widget._labeled_widget()
        if labeled is not None:
            labeled._label_widget.visible = False


def collapsible(title: str, widgets: list, *, labels: bool = True) -> Any:
    """A collapsed superqt ``QCollapsible`` section holding ``widgets`` (a magicgui form).

    Returns the section; its form is ``section.form`` (a :class:`Container`), so
    the widgets stay attributes of their owner and keep their labels.
    """
    from superqt import QCollapsible

    form = Container(widgets=widgets, labels=labels)
    form.margins = (0, 0, 0, 0)
    section = QCollapsible(title)
    # superqt's default margins leave ~28 px of blank space under every collapsed fold
    section.layout().setContentsMargins(0, 2, 0, 2)
    section.layout().setSpacing(0)
    section.content().layout().setContentsMargins(0, 4, 0, 0)
    section.addWidget(form.native)
    section.form = form
    return section


#: The widest a dock's form may ask to be, in pixels.
MAX_FORM_WIDTH = 420
#: The narrowest: room for a model name or a layer name chosen after the dock opened.
MIN_FORM_WIDTH = 360


#: Characters a drop-down list keeps when its dock is narrow (the rest is cut off).
COMBO_MIN_CHARS = 10


def insert_before(container: Container, section: Any, before: Any) -> None:
    """Put the Qt widget ``section`` into ``container``'s form above its sub-widget ``before``
    (e.g. a folded section above the button it configures)."""
    layout = container.native.layout()
    at = next(
        i
        for i in range(layout.count())
        if (w := layout.itemAt(i).widget()) is not None
        and (w is before.native or w.isAncestorOf(before.native))
    )
    layout.insertWidget(at, section)


def shrink_combos(widget: Any) -> None:
    """Let every drop-down list (``QComboBox``) under ``widget`` shrink below its longest item.

    Qt sizes a combo box to its longest choice by default, so choosing a long model
    name or path widens the form; with this it asks for its width but can be
    squeezed to :data:`COMBO_MIN_CHARS` characters, the whole choice in its tooltip.
    """
    from qtpy.QtWidgets import QComboBox, QSizePolicy

    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(policy)
        combo.setMinimumContentsLength(COMBO_MIN_CHARS)
        combo.setSizePolicy(QSizePolicy.Policy.Expanding, combo.sizePolicy().verticalPolicy())
        if not combo.toolTip():  # the whole choice, one hover away, when it is cut short
            combo.currentTextChanged.connect(combo.setToolTip)
            combo.setToolTip(combo.currentText())


def make_scrollable(container: Container) -> Any:
    """Move ``container``'s contents into a vertical scroll area (call at the end of ``__init__``).

    The container's own widget then holds only the scroll area, whose minimum
    size is small: the dock, and so the window, never grows with the form.
    Widgets appended later with magicgui (``append``/``insert``) go into the
    scrolled form. Returns the ``QScrollArea``.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

    full_width(*(w for w in container if isinstance(w, Container) and not w.label))
    outer = container.native
    layout = outer.layout()
    body = QWidget()
    body_layout = QVBoxLayout(body)
    body_layout.setContentsMargins(layout.contentsMargins())
    body_layout.setSpacing(layout.spacing())
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            # Move the item itself: a widget keeps the first layout item made for it, and a
            # new one's cached heights would never be refreshed (wrapped text cut off).
            item.widget().setParent(body)
            body_layout.addItem(item)
        elif item.layout() is not None:
            body_layout.addLayout(item.layout())
        else:
            body_layout.addItem(item)
    body_layout.addStretch(1)  # the form stays at the top of a tall dock
    # magicgui inserts into the backend's ``_layout``: point it at the scrolled form.
    backend = container._widget
    if getattr(backend, "_layout", None) is layout:
        backend._layout = body_layout

    scroll = QScrollArea()
    scroll.setObjectName(SCROLL_NAME)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    # As wide as the form needs (capped, so four docks never push the canvas off the
    # screen); a narrower dock scrolls sideways instead of clipping the fields.
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    scroll.setWidget(body)
    # The dock opens as wide as the form would like (capped); what changes later (a long
    # model name, a path) is cut short in a drop-down that may shrink, not scrolled sideways.
    want = max(body.minimumSizeHint().width(), body.sizeHint().width())
    shrink_combos(body)
    bar = scroll.verticalScrollBar().sizeHint().width()
    scroll.setMinimumWidth(min(max(want + bar, MIN_FORM_WIDTH), MAX_FORM_WIDTH))
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(scroll)
    container._scroll_area = scroll
    return scroll
