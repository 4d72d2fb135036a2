from apps.devices.models import Geofence, haversine_m, point_in_polygon

SQUARE = [(12.0, 77.0), (12.0, 78.0), (13.0, 78.0), (13.0, 77.0)]


def test_a_point_inside_a_polygon_is_inside_and_outside_is_outside():
    assert point_in_polygon(12.5, 77.5, SQUARE)
    assert not point_in_polygon(13.5, 77.5, SQUARE)
    assert not point_in_polygon(12.5, 76.9, SQUARE)


def test_circle_membership_uses_great_circle_distance():
    fence = Geofence(shape="circle", center_lat=12.9716, center_lon=77.5946, radius_m=200)
    assert fence.contains(12.9716, 77.5946)
    assert fence.contains(12.9725, 77.5946)  # about 100 m north
    assert not fence.contains(12.9760, 77.5946)  # about 490 m north
    assert 480 < haversine_m(12.9716, 77.5946, 12.9760, 77.5946) < 500


def test_polygon_fence_uses_its_points():
    fence = Geofence(shape="polygon", polygon=[list(point) for point in SQUARE])
    assert fence.contains(12.2, 77.9)
    assert not fence.contains(11.9, 77.5)
