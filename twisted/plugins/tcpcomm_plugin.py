from twisted.application.service import ServiceMaker

tcpcomm = ServiceMaker(
    "tcpcomm",
    "tcpcomm.tap",
    "A framed TCP message server and a self-healing client.",
    "tcpcomm",
)
